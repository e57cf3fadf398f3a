//! The HTTP API (axum) and the serving loop with its round ticker.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/challenge` | a registration challenge `{nonce, expires_unix, server_signature}`, signed by the server, single-use, valid 5 minutes |
//! | `POST /v1/devices` | register `{device_id, public_key, challenge, signature}` (hex; the device key's signature of the challenge, see [`crate::protocol::Challenge`]); admin token unless open registration |
//! | `POST /v1/updates` | a signed update envelope; `{status: accepted | duplicate}` |
//! | `POST /v1/uploads` | open (or find again) a chunked upload `{seq, length, sha256}`; `{upload_id, offset, length}` or `{status: duplicate}` (signed request) |
//! | `GET /v1/uploads/{id}` | how many bytes the upload holds: `{upload_id, offset, length}` (signed request) |
//! | `PUT /v1/uploads/{id}?offset=N` | the next chunk, starting at the bytes held; answers as above once committed (signed request) |
//! | `POST /v1/uploads/{id}/commit` | assemble and submit like `POST /v1/updates`; `{status: accepted | duplicate}` (signed request) |
//! | `GET /v1/models/latest` | the current version's signed metadata ([`crate::protocol::Latest`]: model id, number, parent, content hash, signature), with the signed rollback marker when an admin made it current again |
//! | `GET /v1/models/{version}` | the model file; `x-pupil-signature` holds the server's signature of its metadata |
//! | `GET /v1/models/{version}/delta?from=N` | the [delta](crate::delta) rebuilding it from version or content hash `N`; headers as above |
//! | `GET /v1/versions` | every version's metadata |
//! | `POST /v1/rollback` | `{version}`: make an earlier version current (admin) |
//! | `GET /v1/metrics` | counts of updates (stored, pending, set aside), rejections by kind, versions, rounds, open uploads, full and delta pulls |
//! | `GET /v1/server-key` | the server's public key |
//!
//! Signed requests carry `Authorization: Pupil ...` made with the device key
//! ([`crate::auth`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use super::guard::guard;
use super::listen::{self, Tls};
use super::{http_upload, ApiError, Server};
use crate::protocol::RegisterRequest;
use crate::store::{Registration, VersionMeta};
use crate::{hex, SyncError};

/// Body of `POST /v1/rollback`.
#[derive(Debug, Deserialize)]
struct RollbackRequest {
    version: u64,
}

/// Query of `GET /v1/models/{version}/delta`.
#[derive(Debug, Deserialize)]
struct DeltaQuery {
    from: String,
}

/// Runs blocking store work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("handler failed: {e}; retry later"),
        ))
    })
}

/// Maps a JSON body rejection.
fn bad_json(e: JsonRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed",
        format!("{}; send a JSON body as documented", e.body_text()),
    )
}

/// Maps a body that could not be read: 413 when too large (with `advice`),
/// else 400.
pub(super) fn body_error(e: BytesRejection, advice: &str) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            e.status(),
            "too_large",
            format!("{}; {advice}", e.body_text()),
        )
    } else {
        ApiError::new(
            e.status(),
            "malformed",
            format!("{}; send the body again", e.body_text()),
        )
    }
}

/// Parses a version number in a path.
fn version_number(version: &str) -> Result<u64, ApiError> {
    version.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("version {version:?} is not a number; use /v1/models/latest to find one"),
        )
    })
}

/// A model file or delta with the version's signature, hash and number in headers.
fn signed_bytes(meta: VersionMeta, bytes: Vec<u8>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::HeaderName::from_static("x-pupil-signature"),
            meta.signature,
        ),
        (
            header::HeaderName::from_static("x-pupil-content-hash"),
            meta.hash,
        ),
        (
            header::HeaderName::from_static("x-pupil-version"),
            meta.version.to_string(),
        ),
    ];
    (headers, bytes).into_response()
}

impl Server {
    /// The axum app.
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.config.max_body;
        Router::new()
            .route("/v1/challenge", get(challenge))
            .route("/v1/devices", post(register))
            .route("/v1/updates", post(updates))
            .route("/v1/uploads", post(http_upload::open))
            .route(
                "/v1/uploads/{id}",
                get(http_upload::status).put(http_upload::chunk),
            )
            .route("/v1/uploads/{id}/commit", post(http_upload::commit))
            .route("/v1/models/latest", get(latest))
            .route("/v1/models/{version}", get(model))
            .route("/v1/models/{version}/delta", get(delta))
            .route("/v1/versions", get(versions))
            .route("/v1/rollback", post(rollback))
            .route("/v1/metrics", get(metrics))
            .route("/v1/server-key", get(server_key))
            .route("/v1/health", get(health))
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint; see the routes under /v1",
                )
            })
            .layer(DefaultBodyLimit::max(limit))
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .layer(axum::middleware::from_fn(log_request))
            .with_state(self)
    }

    /// Whether `headers` carry the admin token.
    pub(super) fn is_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.config.admin_token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "admin requests are disabled; start the server with an admin token",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| tokens_match(g, token)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong admin token; send `Authorization: Bearer <token>`",
            ))
        }
    }
}

/// Whether `given` is the admin `token`, in a time that says nothing about
/// where they differ or how long the token is: both are hashed, then the
/// hashes compared in constant time.
fn tokens_match(given: &str, token: &str) -> bool {
    let (given, token) = (Sha256::digest(given), Sha256::digest(token));
    given.as_slice().ct_eq(token.as_slice()).into()
}

/// `GET /v1/challenge`.
async fn challenge(State(s): State<Arc<Server>>) -> Response {
    Json(s.challenge()).into_response()
}

/// `POST /v1/devices`.
async fn register(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(bad_json)?;
    if !s.config.open_registration {
        s.is_admin(&headers)?;
    }
    let id = req.device_id.clone();
    let outcome = blocking(move || s.register_device(&req)).await?;
    let (status, word) = match outcome {
        Registration::Created => (StatusCode::CREATED, "registered"),
        Registration::Unchanged => (StatusCode::OK, "unchanged"),
        Registration::Conflict | Registration::ChallengeUsed => {
            return Err(ApiError::new(StatusCode::CONFLICT, "device_exists", format!("device {id:?} or its key is registered already with another key or id; pick a new device id")));
        }
    };
    Ok((status, Json(json!({ "status": word, "device_id": id }))).into_response())
}

/// `POST /v1/updates`.
async fn updates(
    State(s): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let err = body_error(e, "send a smaller delta (top-k or int8 encoding)");
        s.count(&format!("rejected.{}", err.kind));
        err
    })?;
    let outcome = blocking(move || s.submit(&body)).await?;
    Ok(Json(json!({ "status": outcome.as_str() })).into_response())
}

/// The "no model" error.
fn no_model() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_model",
        "no version is published yet; start the server with --init-model",
    )
}

/// `GET /v1/models/latest`.
async fn latest(State(s): State<Arc<Server>>) -> Result<Response, ApiError> {
    let latest = s.latest().ok_or_else(no_model)?;
    Ok(Json(latest).into_response())
}

/// `GET /v1/models/{version}`.
async fn model(
    State(s): State<Arc<Server>>,
    Path(version): Path<String>,
) -> Result<Response, ApiError> {
    let n = version_number(&version)?;
    let counter = s.clone();
    let found = blocking(move || Ok((s.store.version_meta(n)?, s.store.version_bytes(n)?))).await?;
    let (Some(meta), Some(bytes)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_version",
            format!("version {n} does not exist; see /v1/versions"),
        ));
    };
    counter.count("pulls.full");
    counter.add("pulls.full_bytes", bytes.len() as u64);
    Ok(signed_bytes(meta, bytes))
}

/// `GET /v1/models/{version}/delta?from=N`.
async fn delta(
    State(s): State<Arc<Server>>,
    Path(version): Path<String>,
    query: Result<Query<DeltaQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let n = version_number(&version)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!(
                "{}; add ?from=N, the version or content hash the device holds",
                e.body_text()
            ),
        )
    })?;
    let (meta, bytes) = blocking(move || s.delta(n, &q.from)).await?;
    Ok(signed_bytes(meta, bytes))
}

/// `GET /v1/versions`.
async fn versions(State(s): State<Arc<Server>>) -> Result<Response, ApiError> {
    let all = blocking(move || Ok(s.store.versions()?)).await?;
    Ok(Json(all).into_response())
}

/// `POST /v1/rollback`.
async fn rollback(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: Result<Json<RollbackRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    s.is_admin(&headers)?;
    let Json(req) = body.map_err(bad_json)?;
    let n = req.version;
    if !blocking(move || Ok(s.rollback(n)?)).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_version",
            format!("version {n} does not exist; see /v1/versions"),
        ));
    }
    Ok(Json(json!({ "status": "rolled_back", "current": n })).into_response())
}

/// `GET /v1/metrics`.
async fn metrics(State(s): State<Arc<Server>>) -> Result<Response, ApiError> {
    let counters = s.counters();
    let ([updates, pending, versions, rounds], set_aside, uploads) = blocking(move || {
        Ok((
            s.store.counts()?,
            s.store.set_aside()?.len(),
            s.store.uploads()?.len(),
        ))
    })
    .await?;
    Ok(Json(json!({
        "updates_stored": updates,
        "updates_pending": pending,
        "updates_set_aside": set_aside,
        "versions": versions,
        "rounds": rounds,
        "uploads_open": uploads,
        "since_start": counters,
    }))
    .into_response())
}

/// Logs one line per request at `info` (target `pupil_sync::http`): method, path, status,
/// the signing key's id when the request is signed, and milliseconds taken.
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Pupil "))
        .and_then(|v| v.split(':').next())
        .unwrap_or("-")
        .to_owned();
    let response = next.run(req).await;
    tracing::info!(
        target: "pupil_sync::http",
        %method,
        %path,
        status = response.status().as_u16(),
        %key,
        ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1e3),
        "request"
    );
    response
}

/// `GET /v1/health`: 200 with the current version when the store answers (for load
/// balancers and `curl`), 503 through the usual error body when it does not.
async fn health(State(s): State<Arc<Server>>) -> Result<Response, ApiError> {
    let (version, [_, pending, _, _]) =
        blocking(move || Ok((s.current_meta().map(|m| m.version), s.store.counts()?))).await?;
    Ok(
        Json(json!({ "status": "ok", "version": version, "updates_pending": pending }))
            .into_response(),
    )
}

/// `GET /v1/server-key`.
async fn server_key(State(s): State<Arc<Server>>) -> Response {
    let key = s.public_key();
    Json(json!({ "public_key": hex::encode(&key), "key_id": hex::encode(&pupil_wire::key_id(&key)) })).into_response()
}

/// Serves `server` over plain HTTP on `listener` until `shutdown` completes,
/// running rounds whenever the round policy says so and removing stale
/// uploads; connections are limited and timed as [`super::ServerConfig`] says.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SyncError> {
    serve_with(server, listener, None, shutdown).await
}

/// [`serve`] over TLS with `tls` (rustls).
pub async fn serve_tls(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Tls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SyncError> {
    serve_with(server, listener, Some(tls), shutdown).await
}

/// [`serve`], over TLS when `tls` is given.
async fn serve_with(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SyncError> {
    let ticker = server.clone();
    let rounds = tokio::spawn(async move {
        let mut interval = tokio::time::interval(ticker.config.tick);
        loop {
            interval.tick().await;
            let s = ticker.clone();
            let ran = tokio::task::spawn_blocking(move || {
                if let Err(e) = s.gc_uploads() {
                    tracing::warn!("removing stale uploads failed: {e}");
                }
                match s.round_due() {
                    Ok(true) => s.run_round().map(|record| {
                        if let Some(r) = record {
                            tracing::info!(
                                round = r.round,
                                updates = r.updates,
                                set_aside = r.set_aside,
                                published = ?r.published,
                                gate = %r.gate,
                                "round"
                            );
                        }
                    }),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
            if let Ok(Err(e)) = ran {
                tracing::error!("round failed: {e}");
            }
        }
    });
    let result = listen::accept_loop(server, listener, tls, shutdown).await;
    rounds.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn admin_tokens_match_only_when_equal() {
        assert!(tokens_match("s3cret-token", "s3cret-token"));
        for wrong in ["", "s3cret-tokeN", "s3cret-toke", "s3cret-token ", "x"] {
            assert!(!tokens_match(wrong, "s3cret-token"), "{wrong:?}");
        }
    }
}
