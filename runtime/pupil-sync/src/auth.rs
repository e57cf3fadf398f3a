//! Signed requests: how a device authenticates a request that is not itself a
//! signed update envelope (the chunked upload endpoints).
//!
//! It is the envelopes' scheme applied to a request: the device's registered
//! Ed25519 key signs, and the key id (first 8 bytes of SHA-256 of the public
//! key) tells the server which device it is. The header is
//!
//! `Authorization: Pupil <key id, 16 hex>:<unix seconds>:<signature, 128 hex>`
//!
//! and the signed message is [`REQUEST_SIGNING_CONTEXT`], the method, `\n`,
//! the path with its query, `\n`, the decimal timestamp, `\n`, and the 32-byte
//! SHA-256 of the body. The server refuses timestamps more than
//! [`MAX_CLOCK_SKEW_SECS`] away from its clock, which bounds replays; a
//! replayed chunk or commit is harmless anyway (an overlapping chunk is
//! refused, a second commit finds the update stored).

use pupil_wire::update::KEY_ID_LEN;
use pupil_wire::KeyId;
use sha2::{Digest, Sha256};

use crate::hex;
use crate::keys::KeyPair;

/// What a device signs for a request: this context, then the request's parts.
pub const REQUEST_SIGNING_CONTEXT: &[u8] = b"pupil request v1\0";

/// The authorization scheme's name.
pub const SCHEME: &str = "Pupil";

/// How far a request's timestamp may be from the server's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The message signed for a request.
pub fn request_message(method: &str, path_and_query: &str, unix: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_SIGNING_CONTEXT.len() + path_and_query.len() + 64);
    m.extend_from_slice(REQUEST_SIGNING_CONTEXT);
    m.extend_from_slice(method.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path_and_query.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(unix.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&Sha256::digest(body));
    m
}

/// The `Authorization` header value with which `key` signs the request
/// `method path_and_query` with `body` at `unix` seconds.
pub fn authorization(
    key: &KeyPair,
    method: &str,
    path_and_query: &str,
    unix: u64,
    body: &[u8],
) -> String {
    let signature = key.sign(&request_message(method, path_and_query, unix, body));
    format!(
        "{SCHEME} {}:{unix}:{}",
        hex::encode(&key.key_id()),
        hex::encode(&signature)
    )
}

/// A parsed `Authorization: Pupil ...` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    /// The signer's key id.
    pub key_id: KeyId,
    /// The request's timestamp, seconds since the Unix epoch.
    pub unix: u64,
    /// The Ed25519 signature of [`request_message`].
    pub signature: [u8; 64],
}

/// Parses an `Authorization` header value of the `Pupil` scheme; `None` when
/// it is not one.
pub fn parse_authorization(value: &str) -> Option<SignedRequest> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let mut parts = rest.split(':');
    let key_id = hex::decode::<KEY_ID_LEN>(parts.next()?)?;
    let unix = parts
        .next()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    let signature = hex::decode::<64>(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(SignedRequest {
        key_id,
        unix,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_header_parses_and_verifies_only_for_its_request() {
        let key = KeyPair::from_seed([3; 32]);
        let header = authorization(&key, "PUT", "/v1/uploads/ab?offset=4", 1000, b"body");
        let parsed = parse_authorization(&header).unwrap();
        assert_eq!((parsed.key_id, parsed.unix), (key.key_id(), 1000));
        let verify = |m: &str, p: &str, t: u64, b: &[u8]| {
            crate::keys::verify(
                &key.public(),
                &request_message(m, p, t, b),
                &parsed.signature,
            )
        };
        assert!(verify("PUT", "/v1/uploads/ab?offset=4", 1000, b"body"));
        assert!(!verify("PUT", "/v1/uploads/ab?offset=5", 1000, b"body"));
        assert!(!verify("POST", "/v1/uploads/ab?offset=4", 1000, b"body"));
        assert!(!verify("PUT", "/v1/uploads/ab?offset=4", 1001, b"body"));
        assert!(!verify("PUT", "/v1/uploads/ab?offset=4", 1000, b"bodz"));
        for bad in [
            "",
            "Bearer x",
            "Pupil",
            "Pupil zz:1:00",
            &header.replace(":1000:", ":-1:"),
            &format!("{header}:"),
            &header.replace("Pupil ", "Pupil  "),
        ] {
            assert_eq!(parse_authorization(bad), None, "{bad:?}");
        }
    }
}
