//! The JSON error every rejected request gets: `{ "error": kind, "message": ... }`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::SyncError;

/// A rejected request: its status code, a stable machine-readable kind and a
/// message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error kind, e.g. `bad_signature`.
    pub kind: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `status` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// A 500 for a server-side failure.
    pub fn internal(e: &SyncError) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e}; retry later"),
        )
    }
}

impl From<SyncError> for ApiError {
    fn from(e: SyncError) -> Self {
        Self::internal(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.kind, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}
