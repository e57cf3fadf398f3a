//! Authenticating a signed request ([`crate::auth`]): which registered device
//! sent it, or a 401 that says what is wrong; and registration with proof of
//! the key: a device signs a server challenge with the key it registers.

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{unix_now, ApiError, Server};
use crate::auth::{parse_authorization, request_message, MAX_CLOCK_SKEW_SECS};
use crate::protocol::{Challenge, RegisterRequest, CHALLENGE_NONCE_LEN, CHALLENGE_TTL_SECS};
use crate::store::Registration;
use crate::{hex, keys};

impl Server {
    /// The id of the registered device whose key signed the request
    /// `method uri` with `headers` and `body`.
    pub(super) fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<String, ApiError> {
        let signed = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_authorization)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "missing or malformed request signature; send `Authorization: Pupil <key id>:<unix seconds>:<signature>` signed with the device key (see pupil_sync::auth)",
                )
            })?;
        let skew = unix_now().abs_diff(signed.unix);
        if skew > MAX_CLOCK_SKEW_SECS {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "stale_request",
                format!("the request is signed for a time {skew} s away from the server's clock (at most {MAX_CLOCK_SKEW_SECS} s); set the device clock and sign the request again"),
            ));
        }
        let (device, public) = self.store.device_for_key(&signed.key_id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unknown_device",
                "the signing key is not registered; register the device with POST /v1/devices first",
            )
        })?;
        let target = uri
            .path_and_query()
            .map_or_else(|| uri.path(), |p| p.as_str());
        let message = request_message(method.as_str(), target, signed.unix, body);
        if !keys::verify(&public, &message, &signed.signature) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!("the request signature does not verify with device {device:?}'s registered key; sign the method, path, time and body with that device's key"),
            ));
        }
        Ok(device)
    }
}

impl Server {
    /// A fresh registration challenge, valid for [`CHALLENGE_TTL_SECS`]:
    /// stateless until used, since the server's own signature vouches for it.
    pub fn challenge(&self) -> Challenge {
        let mut nonce = [0u8; CHALLENGE_NONCE_LEN];
        StdRng::from_os_rng().fill_bytes(&mut nonce);
        let expires_unix = unix_now() + CHALLENGE_TTL_SECS;
        Challenge {
            nonce: hex::encode(&nonce),
            expires_unix,
            server_signature: hex::encode(
                &self
                    .key
                    .sign(&Challenge::server_message(&nonce, expires_unix)),
            ),
        }
    }

    /// Registers the device of `req` if it proves it holds the private key
    /// of what it registers: its signature of a challenge this server gave
    /// out, unexpired and not used before.
    pub(super) fn register_device(&self, req: &RegisterRequest) -> Result<Registration, ApiError> {
        let valid_id = !req.device_id.is_empty()
            && req.device_id.len() <= pupil_wire::MAX_DEVICE_ID_LEN
            && req
                .device_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_id {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "device_id must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            ));
        }
        let key = hex::decode::<32>(&req.public_key).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "public_key must be 64 hex digits (a 32-byte Ed25519 public key)",
            )
        })?;
        let bad_challenge = |why: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_challenge",
                format!("{why}; get a fresh challenge from GET /v1/challenge, sign it with the device key and register again"),
            )
        };
        let c = &req.challenge;
        let nonce = c
            .nonce_bytes()
            .ok_or_else(|| bad_challenge("the challenge nonce is not 32 hex digits"))?;
        let server_signed = hex::decode::<64>(&c.server_signature).is_some_and(|sig| {
            keys::verify(
                &self.public_key(),
                &Challenge::server_message(&nonce, c.expires_unix),
                &sig,
            )
        });
        if !server_signed {
            return Err(bad_challenge("this server did not issue that challenge"));
        }
        let now = unix_now();
        if c.expires_unix < now {
            return Err(bad_challenge("the challenge expired"));
        }
        let proven = c
            .registration_message(&req.device_id, &key)
            .zip(hex::decode::<64>(&req.signature))
            .is_some_and(|(message, sig)| keys::verify(&key, &message, &sig));
        if !proven {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "the registration is not signed by the private key of the public key it registers; sign the challenge with the device's own key (Client::register does)",
            ));
        }
        let outcome = self.store.register_with_challenge(
            &req.device_id,
            &key,
            &pupil_wire::key_id(&key),
            (c.expires_unix, nonce.as_slice()),
            now,
        )?;
        if outcome == Registration::ChallengeUsed {
            return Err(bad_challenge("the challenge was used before"));
        }
        Ok(outcome)
    }
}
