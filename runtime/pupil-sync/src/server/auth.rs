//! Authenticating a signed request ([`crate::auth`]): which registered device
//! sent it, or a 401 that says what is wrong.

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};

use super::{unix_now, ApiError, Server};
use crate::auth::{parse_authorization, request_message, MAX_CLOCK_SKEW_SECS};
use crate::keys;

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
