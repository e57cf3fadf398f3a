//! Uploading one large signed update in resumable chunks: open (or find
//! again) the server's upload, send the bytes from the offset the server
//! holds, commit. Every request is signed with the device key ([`crate::auth`]).

use serde::Deserialize;
use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

use super::http::{Attempt, Client, PushReport};
use crate::keys::KeyPair;
use crate::protocol::{unix_now, OpenUpload, UploadState, MAX_UPLOAD_CHUNKS};
use crate::{auth, hex, SyncError};

/// Refusals after which the next try opens the upload again and continues
/// from what the server holds, instead of giving the update up.
const RESYNC: [&str; 5] = [
    "overlapping_chunk",
    "wrong_offset",
    "no_such_upload",
    "incomplete_upload",
    "hash_mismatch",
];

/// When and how updates are uploaded in chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPolicy {
    /// Updates longer than this many bytes are uploaded in chunks.
    pub threshold: usize,
    /// Bytes per chunk (raised when an update would need more than
    /// [`MAX_UPLOAD_CHUNKS`] chunks).
    pub size: usize,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy {
            threshold: 256 << 10,
            size: 256 << 10,
        }
    }
}

/// The answer to opening an upload.
#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAnswer {
    /// Send from `offset`.
    Upload(UploadState),
    /// The server has the update already.
    Stored {
        /// `duplicate`.
        status: String,
    },
}

/// A request method with or without a body.
#[derive(Clone, Copy)]
enum Verb {
    Get,
    Post,
    Put,
}

impl Verb {
    /// The method's name, as signed.
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
        }
    }
}

impl Client {
    /// Sends `verb path` with `body`, signed with `key`, once.
    fn signed(&self, key: &KeyPair, verb: Verb, path: &str, body: &[u8]) -> Attempt {
        let url = format!("{}{path}", self.url);
        // The server sees the URL's own path prefix, if any, before `path`.
        let prefix = self
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("");
        let target = format!("{prefix}{path}");
        let authorization = auth::authorization(key, verb.as_str(), &target, unix_now(), body);
        let result: Result<Response<Body>, ureq::Error> = match verb {
            Verb::Get => self
                .agent
                .get(&url)
                .header("authorization", &authorization)
                .call(),
            Verb::Post => self
                .agent
                .post(&url)
                .header("authorization", &authorization)
                .header("content-type", "application/json")
                .send(body),
            Verb::Put => self
                .agent
                .put(&url)
                .header("authorization", &authorization)
                .header("content-type", "application/octet-stream")
                .send(body),
        };
        match Self::classify(&url, result) {
            Attempt::Refused(status, err) if RESYNC.contains(&err.error.as_str()) => {
                Attempt::Retry(Self::refused(url, status, err))
            }
            other => other,
        }
    }

    /// One try at uploading update `seq` (signed envelope `bytes`) in chunks,
    /// continuing from the bytes the server holds.
    pub(super) fn upload_chunked(
        &self,
        key: &KeyPair,
        seq: u64,
        bytes: &[u8],
        report: &mut PushReport,
    ) -> Attempt {
        let length = bytes.len() as u64;
        let open = OpenUpload {
            seq,
            length,
            sha256: hex::encode(&Sha256::digest(bytes)),
        };
        let open = serde_json::to_vec(&open).unwrap_or_default();
        let answer = match self.signed(key, Verb::Post, "/v1/uploads", &open) {
            Attempt::Done(body) => body,
            // A server without chunked uploads takes the update in one request.
            Attempt::Refused(404, err) if err.error == "not_found" => {
                return self.upload_whole(key, bytes, report)
            }
            other => return other,
        };
        let state = match serde_json::from_slice(&answer) {
            Ok(OpenAnswer::Upload(state)) => state,
            Ok(OpenAnswer::Stored { status }) if status == "duplicate" => {
                return Attempt::Done(answer)
            }
            Ok(OpenAnswer::Stored { status }) => {
                return bad_answer(format!("opening an upload answered status {status:?}"))
            }
            Err(e) => return bad_answer(format!("opening an upload: {e}")),
        };
        let id = state.upload_id;
        if state.offset > 0 {
            report.resumed.push((seq, state.offset));
        }
        let per_chunk = length.div_ceil(MAX_UPLOAD_CHUNKS);
        let size = (self.chunks.size as u64).max(per_chunk).max(1);
        let mut offset = state.offset;
        while offset < length {
            let end = length.min(offset + size);
            let chunk = &bytes[offset as usize..end as usize];
            report.bytes_sent += chunk.len() as u64;
            let path = format!("/v1/uploads/{id}?offset={offset}");
            let held = match self.signed(key, Verb::Put, &path, chunk) {
                Attempt::Done(body) => serde_json::from_slice::<UploadState>(&body),
                other => return other,
            };
            match held {
                Ok(h) if h.offset > offset && h.offset <= length => offset = h.offset,
                Ok(h) => {
                    return bad_answer(format!(
                        "the server holds {} bytes after a chunk ending at {end}",
                        h.offset
                    ))
                }
                Err(e) => return bad_answer(format!("appending a chunk: {e}")),
            }
        }
        self.signed(key, Verb::Post, &format!("/v1/uploads/{id}/commit"), &[])
    }

    /// Asks the server how many bytes of `key`'s upload `id` it holds.
    pub fn upload_state(&self, key: &KeyPair, id: &str) -> Result<UploadState, SyncError> {
        match self.signed(key, Verb::Get, &format!("/v1/uploads/{id}"), &[]) {
            Attempt::Done(body) => serde_json::from_slice(&body)
                .map_err(|e| SyncError::BadAnswer(format!("upload state: {e}"))),
            Attempt::Refused(status, err) => {
                Err(Self::refused(format!("upload {id}"), status, err))
            }
            Attempt::Retry(e) => Err(e),
        }
    }
}

/// A retryable unusable answer.
fn bad_answer(detail: String) -> Attempt {
    Attempt::Retry(SyncError::BadAnswer(detail))
}
