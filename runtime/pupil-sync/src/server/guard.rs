//! What a request must show before the server reads its body: a declared
//! length within [`ServerConfig::max_body`] (else 413 at once), a signature
//! header naming a registered device with a fresh clock, or the admin token,
//! for bodies larger than [`ServerConfig::max_anonymous_body`] (else 401 at
//! once), and room in the memory budget of its kind (signed or anonymous;
//! else 503 after a short wait). The body must then arrive within
//! [`ServerConfig::body_timeout`] (else 408); the handler gets it whole.
//!
//! A large body is thus only read for a registered device, and all bodies
//! held at once never exceed the two budgets, whatever clients send.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::http::blocking;
use super::{unix_now, ApiError, Server};
use crate::auth::{parse_authorization, MAX_CLOCK_SKEW_SECS};

/// How long a request waits for room in its memory budget before a 503.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// The memory budgets of bodies being read or handled, in KiB.
#[derive(Debug)]
pub(super) struct Budgets {
    /// Bodies of signed requests.
    signed: Arc<Semaphore>,
    /// Bodies of requests without a signature header.
    anonymous: Arc<Semaphore>,
}

impl Budgets {
    /// Budgets of `signed` and `anonymous` bytes.
    pub(super) fn new(signed: usize, anonymous: usize) -> Self {
        let kib = |bytes: usize| (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        Budgets {
            signed: Arc::new(Semaphore::new(kib(signed))),
            anonymous: Arc::new(Semaphore::new(kib(anonymous))),
        }
    }
}

/// An error answer that also closes the connection (its body, if any, is not read).
fn refuse(err: ApiError) -> Response {
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The declared `Content-Length`; `Err` when it is not a number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "Content-Length is not a number; send the body's length in bytes",
            )
        })
}

impl Server {
    /// Whether `headers` vouch for a large body: the admin token, or a
    /// request signature by a registered device's key at a time close to the
    /// server's clock. The signature itself is checked once the body is in.
    async fn vouched(self: &Arc<Self>, headers: &HeaderMap) -> Result<bool, ApiError> {
        if self.is_admin(headers).is_ok() {
            return Ok(true);
        }
        let Some(signed) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_authorization)
        else {
            return Ok(false);
        };
        if unix_now().abs_diff(signed.unix) > MAX_CLOCK_SKEW_SECS {
            return Ok(false);
        }
        let s = self.clone();
        blocking(move || Ok(s.store.device_for_key(&signed.key_id)?.is_some())).await
    }
}

/// The middleware of the module doc.
pub(super) async fn guard(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let declared = match content_length(req.headers()) {
        Ok(d) => d,
        Err(e) => return refuse(e),
    };
    let limit = s.config.max_body as u64;
    if let Some(n) = declared.filter(|&n| n > limit) {
        return refuse(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body would be {n} bytes, more than the {limit} this server takes; send a smaller delta (top-k or int8 encoding) or upload it in chunks"),
        ));
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let bound = match declared {
        Some(0) => return next.run(req).await,
        Some(n) => n,
        None if chunked => limit,
        None => return next.run(req).await,
    };
    let anonymous_limit = s.config.max_anonymous_body as u64;
    let budget = if bound <= anonymous_limit {
        &s.budgets.anonymous
    } else {
        match s.vouched(req.headers()).await {
            Ok(true) => &s.budgets.signed,
            Ok(false) => {
                s.count("rejected.unauthenticated");
                return refuse(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    format!("a body over {anonymous_limit} bytes needs `Authorization: Pupil ...` signed by a registered device key at the current time (Client::push does it), or the admin token"),
                ));
            }
            Err(e) => return refuse(e),
        }
    };
    let kib = u32::try_from(bound.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let permit = match tokio::time::timeout(BUDGET_WAIT, budget.clone().acquire_many_owned(kib))
        .await
    {
        Ok(Ok(p)) => p,
        _ => {
            s.count("rejected.busy");
            let mut response = refuse(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server holds as many request bodies as its memory budget allows; retry in a few seconds",
            ));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
    };
    let (parts, body) = req.into_parts();
    let deadline = s.config.body_timeout;
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, bound as usize)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return refuse(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the body is longer than its Content-Length or broke off; send it again",
            ))
        }
        Err(_) => {
            s.count("rejected.slow_body");
            return refuse(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "slow_body",
                format!(
                    "the body did not arrive within {} s; send it again (large updates in chunks)",
                    deadline.as_secs()
                ),
            ));
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(permit);
    response
}
