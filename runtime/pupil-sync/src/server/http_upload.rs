//! The chunked upload endpoints (see the route table in the `http` module):
//! each request is authenticated as a signed request of a registered device,
//! then handed to the [`Server`]'s upload methods off the async workers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::http::{blocking, body_error};
use super::upload::Opened;
use super::{ApiError, Server};
use crate::protocol::OpenUpload;

/// Query of `PUT /v1/uploads/{id}`.
#[derive(Debug, Deserialize)]
pub(super) struct ChunkQuery {
    offset: u64,
}

/// A signed request: method, target, headers and body, authenticated inside
/// [`blocking`] (the key lookup reads the store).
struct Signed {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Signed {
    /// Gathers a request whose body may have failed to arrive.
    fn new(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Self, ApiError> {
        let body = body.map_err(|e| body_error(e, "send smaller chunks"))?;
        Ok(Signed {
            method,
            uri,
            headers,
            body,
        })
    }

    /// The device that signed it.
    fn device(&self, s: &Server) -> Result<String, ApiError> {
        s.authenticate(&self.method, &self.uri, &self.headers, &self.body)
    }
}

/// `POST /v1/uploads`.
pub(super) async fn open(
    State(s): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = Signed::new(method, uri, headers, body)?;
    let opened = blocking(move || {
        let device = req.device(&s)?;
        let open: OpenUpload = serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("{e}; send JSON {{\"seq\": N, \"length\": BYTES, \"sha256\": HEX}}"),
            )
        })?;
        s.open_upload(&device, &open)
    })
    .await?;
    Ok(match opened {
        Opened::Upload { state, resumed } => {
            let status = if resumed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(state)).into_response()
        }
        Opened::Duplicate => Json(json!({ "status": "duplicate" })).into_response(),
    })
}

/// `GET /v1/uploads/{id}`.
pub(super) async fn status(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = Signed::new(method, uri, headers, Ok(Bytes::new()))?;
    let state = blocking(move || s.upload_state(&req.device(&s)?, &id)).await?;
    Ok(Json(state).into_response())
}

/// `PUT /v1/uploads/{id}?offset=N`.
pub(super) async fn chunk(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    query: Result<Query<ChunkQuery>, QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!(
                "{}; add ?offset=N, the chunk's first byte in the update",
                e.body_text()
            ),
        )
    })?;
    let req = Signed::new(method, uri, headers, body)?;
    let state = blocking(move || s.put_chunk(&req.device(&s)?, &id, q.offset, &req.body)).await?;
    Ok(Json(state).into_response())
}

/// `POST /v1/uploads/{id}/commit`.
pub(super) async fn commit(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = Signed::new(method, uri, headers, body)?;
    let outcome = blocking(move || s.commit_upload(&req.device(&s)?, &id)).await?;
    Ok(Json(json!({ "status": outcome.as_str() })).into_response())
}
