//! Talking to the server: register, push the outbox (whole updates, or large
//! ones in resumable chunks), metadata. Pulls are in `pull`.

use std::thread;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::Body;

use super::upload::ChunkPolicy;
use super::Outbox;
use crate::keys::KeyPair;
use crate::protocol::{Challenge, Latest, RegisterRequest, VersionMeta};
use crate::{hex, SyncError};

/// Largest answer a request accepts (a model file), in bytes.
const MAX_ANSWER_LEN: u64 = 4 << 30;

/// How uploads are retried: exponential backoff from `base`, capped at `max`,
/// each wait randomly shortened by up to half (jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per update before giving up for this push.
    pub attempts: u32,
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `attempt` (0-based), with jitter from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        full.mul_f64(rng.random_range(0.5..=1.0))
    }
}

/// Refusals the device can fix, after which an update stays queued: the
/// device is not registered yet, or its clock is off.
const FIXABLE: [&str; 2] = ["unknown_device", "stale_request"];

/// An update the server refused for a reason the device can fix: it stays
/// queued, and the push stops there (the next ones would be refused alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The update's sequence number.
    pub seq: u64,
    /// The error kind, e.g. `unknown_device`.
    pub kind: String,
    /// The server's message and what to do on the device.
    pub message: String,
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Updates the server stored.
    pub accepted: Vec<u64>,
    /// Updates the server had already.
    pub duplicates: Vec<u64>,
    /// Updates refused for good, with the error kind; moved out of the queue
    /// (to `rejected/`, from where [`Outbox::requeue`] brings them back).
    pub rejected: Vec<(u64, String)>,
    /// The update the push stopped at, kept queued with the rest, when the
    /// server refused it for a reason the device can fix.
    pub kept: Option<Kept>,
    /// Update bytes sent: whole updates and chunks, including any sent again.
    pub bytes_sent: u64,
    /// Chunked uploads continued from bytes the server held: (sequence number, offset).
    pub resumed: Vec<(u64, u64)>,
}

/// The server's JSON error.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorBody {
    /// The error kind.
    pub(super) error: String,
    /// What is wrong and what to do.
    pub(super) message: String,
}

/// A connection to a sync server.
#[derive(Clone, Debug)]
pub struct Client {
    pub(super) url: String,
    pub(super) agent: ureq::Agent,
    retry: RetryPolicy,
    pub(super) chunks: ChunkPolicy,
}

/// The outcome of one attempt.
pub(super) enum Attempt {
    /// 2xx, with the body.
    Done(Vec<u8>),
    /// A refusal that retrying cannot fix.
    Refused(u16, ErrorBody),
    /// A failure worth retrying.
    Retry(SyncError),
}

/// An HTTP agent that returns error statuses as answers, with `tls`.
fn agent(tls: TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .tls_config(tls)
        .build()
        .into()
}

impl Client {
    /// A client of the server at `url`, e.g. `http://127.0.0.1:7070`, or
    /// `https://...` with a certificate the web's roots (Mozilla's) vouch for.
    pub fn new(url: &str) -> Self {
        Client {
            url: url.trim_end_matches('/').to_owned(),
            agent: agent(TlsConfig::default()),
            retry: RetryPolicy::default(),
            chunks: ChunkPolicy::default(),
        }
    }

    /// The same client trusting only the server certificate `pem` (PEM, as
    /// given to `pupil serve --tls-cert`) for `https://` URLs: a pinned,
    /// possibly self-signed certificate instead of the web's roots.
    pub fn with_pinned_cert(mut self, pem: &[u8]) -> Result<Self, SyncError> {
        let certs = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                SyncError::InvalidArgument(format!(
                    "the pinned certificate is not PEM: {e}; pass the server's --tls-cert file"
                ))
            })?;
        if certs.is_empty() {
            return Err(SyncError::InvalidArgument(
                "the pinned certificate file holds no CERTIFICATE block; pass the server's \
                 --tls-cert file"
                    .into(),
            ));
        }
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&certs))
            .build();
        self.agent = agent(tls);
        Ok(self)
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client with another chunking policy.
    pub fn with_chunks(mut self, chunks: ChunkPolicy) -> Self {
        self.chunks = chunks;
        self
    }

    /// Classifies a response or transport error of a request to `url`.
    pub(super) fn classify(url: &str, result: Result<Response<Body>, ureq::Error>) -> Attempt {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry(SyncError::Network {
                    url: url.to_owned(),
                    detail: e.to_string(),
                })
            }
        };
        let status = resp.status().as_u16();
        let body = match resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_LEN)
            .read_to_vec()
        {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry(SyncError::Network {
                    url: url.to_owned(),
                    detail: e.to_string(),
                })
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(body);
        }
        let err: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
            error: "unknown".into(),
            message: String::from_utf8_lossy(&body).into_owned(),
        });
        if status >= 500 || status == 408 || status == 429 {
            Attempt::Retry(SyncError::Rejected {
                what: url.to_owned(),
                status,
                kind: err.error,
                message: err.message,
            })
        } else {
            Attempt::Refused(status, err)
        }
    }

    /// A refusal as an error about `what`.
    pub(super) fn refused(what: String, status: u16, err: ErrorBody) -> SyncError {
        SyncError::Rejected {
            what,
            status,
            kind: err.error,
            message: err.message,
        }
    }

    /// GETs `path` once.
    pub(super) fn get(&self, path: &str) -> Result<(Vec<u8>, Option<Response<()>>), SyncError> {
        let url = format!("{}{path}", self.url);
        let result = self.agent.get(&url).call();
        let headers = result.as_ref().ok().map(|r| {
            let mut h = Response::new(());
            *h.headers_mut() = r.headers().clone();
            h
        });
        match Self::classify(&url, result) {
            Attempt::Done(body) => Ok((body, headers)),
            Attempt::Refused(status, err) => Err(Self::refused(url, status, err)),
            Attempt::Retry(e) => Err(e),
        }
    }

    /// Registers `device_id` with `key`'s public key, proving it holds the
    /// private key: it signs a fresh server challenge (`GET /v1/challenge`)
    /// with `key`. `admin_token` is needed unless the server allows open
    /// registration.
    pub fn register(
        &self,
        device_id: &str,
        key: &KeyPair,
        admin_token: Option<&str>,
    ) -> Result<(), SyncError> {
        let (body, _) = self.get("/v1/challenge")?;
        let challenge: Challenge = serde_json::from_slice(&body)
            .map_err(|e| SyncError::BadAnswer(format!("registration challenge: {e}")))?;
        let public_key = key.public();
        let message = challenge
            .registration_message(device_id, &public_key)
            .ok_or_else(|| {
                SyncError::BadAnswer("the registration challenge's nonce is not hex".into())
            })?;
        let request = RegisterRequest {
            device_id: device_id.to_owned(),
            public_key: hex::encode(&public_key),
            signature: hex::encode(&key.sign(&message)),
            challenge,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| SyncError::InvalidArgument(format!("registration request: {e}")))?;
        let url = format!("{}/v1/devices", self.url);
        let mut req = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(t) = admin_token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        match Self::classify(&url, req.send(&body[..])) {
            Attempt::Done(_) => Ok(()),
            Attempt::Refused(status, err) => Err(Self::refused(
                format!("registration of {device_id:?}"),
                status,
                err,
            )),
            Attempt::Retry(e) => Err(e),
        }
    }

    /// Uploads every queued update in order, retrying transient failures with
    /// backoff. Every request is signed with the device's `key` (the key the
    /// updates were queued with; a server reads large bodies only from a
    /// device it knows), and updates larger than the chunking threshold go in
    /// resumable chunks, each retry continuing from the bytes the server
    /// holds. [`DeviceDir::push`](super::DeviceDir::push) does this with the
    /// device directory's own key and outbox. An update leaves the outbox only once the server acknowledged it
    /// (accepted or duplicate) or refused it for good (moved aside). A
    /// refusal the device can fix (not registered yet, clock off) keeps the
    /// update queued and ends the push ([`PushReport::kept`]). Stops with an
    /// error, keeping the rest queued, when retries run out.
    pub fn push(&self, key: &KeyPair, outbox: &Outbox) -> Result<PushReport, SyncError> {
        let mut rng = StdRng::from_os_rng();
        let mut report = PushReport::default();
        'updates: for seq in outbox.queued()? {
            let bytes = outbox.read(seq)?;
            let mut attempt = 0;
            loop {
                let result = if bytes.len() > self.chunks.threshold {
                    self.upload_chunked(key, seq, &bytes, &mut report)
                } else {
                    self.upload_whole(key, &bytes, &mut report)
                };
                match result {
                    Attempt::Done(body) => {
                        let duplicate = String::from_utf8_lossy(&body).contains("\"duplicate\"");
                        outbox.remove(seq)?;
                        if duplicate {
                            report.duplicates.push(seq)
                        } else {
                            report.accepted.push(seq)
                        }
                        break;
                    }
                    Attempt::Refused(_, err) if FIXABLE.contains(&err.error.as_str()) => {
                        let message = format!("{}; {}", err.message, fix(&err.error));
                        report.kept = Some(Kept {
                            seq,
                            kind: err.error,
                            message,
                        });
                        break 'updates;
                    }
                    Attempt::Refused(_, err) => {
                        outbox.reject(seq)?;
                        report.rejected.push((seq, err.error));
                        break;
                    }
                    Attempt::Retry(e) => {
                        attempt += 1;
                        if attempt >= self.retry.attempts {
                            return Err(e);
                        }
                        thread::sleep(self.retry.delay(attempt - 1, &mut rng));
                    }
                }
            }
        }
        Ok(report)
    }

    /// One try at uploading a signed update in one request, the request itself
    /// signed with the device `key` (a server reads a large body only from a
    /// device it knows).
    pub(super) fn upload_whole(
        &self,
        key: &KeyPair,
        bytes: &[u8],
        report: &mut PushReport,
    ) -> Attempt {
        let path = "/v1/updates";
        let url = format!("{}{path}", self.url);
        report.bytes_sent += bytes.len() as u64;
        let unix = crate::protocol::unix_now();
        let req = self
            .agent
            .post(&url)
            .header("content-type", "application/octet-stream")
            .header(
                "authorization",
                crate::auth::authorization(key, "POST", path, unix, bytes),
            );
        Self::classify(&url, req.send(bytes))
    }

    /// The server's public key, as it announces it. Pin it once (e.g. at
    /// provisioning) and pass it to [`Client::pull`]; fetching it again for
    /// every pull would trust whoever answers.
    pub fn server_key(&self) -> Result<[u8; 32], SyncError> {
        #[derive(Deserialize)]
        struct Key {
            public_key: String,
        }
        let (body, _) = self.get("/v1/server-key")?;
        let key: Key =
            serde_json::from_slice(&body).map_err(|e| SyncError::BadAnswer(e.to_string()))?;
        hex::decode(&key.public_key)
            .ok_or_else(|| SyncError::BadAnswer("server key is not 64 hex digits".into()))
    }

    /// The current version's metadata and rollback marker, verified with
    /// the pinned `server_key`.
    pub fn latest(&self, server_key: &[u8; 32]) -> Result<Latest, SyncError> {
        let (body, _) = self.get("/v1/models/latest")?;
        let latest: Latest = serde_json::from_slice(&body)
            .map_err(|e| SyncError::BadAnswer(format!("latest version metadata: {e}")))?;
        latest.verify(server_key)?;
        Ok(latest)
    }

    /// Every published version's metadata, oldest first, as the server
    /// announces it (for display: [`Client::latest`] verifies).
    pub fn versions(&self) -> Result<Vec<VersionMeta>, SyncError> {
        let (body, _) = self.get("/v1/versions")?;
        serde_json::from_slice(&body)
            .map_err(|e| SyncError::BadAnswer(format!("version list: {e}")))
    }

    /// Makes `version` the current one again (needs the server's admin token).
    pub fn rollback(&self, version: u64, admin_token: &str) -> Result<(), SyncError> {
        let url = format!("{}/v1/rollback", self.url);
        let body = serde_json::json!({ "version": version }).to_string();
        let req = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {admin_token}"));
        match Self::classify(&url, req.send(body.as_bytes())) {
            Attempt::Done(_) => Ok(()),
            Attempt::Refused(status, err) => Err(Self::refused(
                format!("rollback to version {version}"),
                status,
                err,
            )),
            Attempt::Retry(e) => Err(e),
        }
    }
}

/// What the device does about fixable refusal `kind`.
fn fix(kind: &str) -> &'static str {
    if kind == "unknown_device" {
        "the update stays queued: register the device (`pupil sync register`), then push again"
    } else {
        "the update stays queued: set the device's clock, then push again"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 0..10 {
            let d = p.delay(attempt, &mut rng);
            let full = Duration::from_millis(100 << attempt.min(4)).min(Duration::from_secs(1));
            assert!(d <= full && d >= full / 2, "attempt {attempt}: {d:?}");
        }
    }
}
