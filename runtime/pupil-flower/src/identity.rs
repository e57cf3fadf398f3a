//! A SuperNode's identity: an ECDSA key pair on SECP384R1, kept in a PEM file (PKCS#8,
//! owner-only) like the device key, and the three headers Flower's SuperLink checks on
//! every Fleet request: the public key, an ISO-8601 UTC timestamp and the key's signature
//! of that timestamp (`flwr/supernode/node_auth_http_interceptor.py`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::fleet::FleetError;

/// Header carrying the base64 of the node's public key (PEM, SubjectPublicKeyInfo).
pub const PUBLIC_KEY_HEADER: &str = "flwr-public-key";
/// Header carrying the ISO-8601 UTC time the request was signed at.
pub const TIMESTAMP_HEADER: &str = "flwr-timestamp";
/// Header carrying the base64 of the DER ECDSA-SHA256 signature of the timestamp.
pub const SIGNATURE_HEADER: &str = "flwr-signature";

/// A SuperNode's key pair.
pub struct NodeKey {
    key: SigningKey,
    public_pem: Vec<u8>,
}

impl NodeKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<NodeKey, FleetError> {
        let mut bytes = [0u8; 48];
        loop {
            rand::rngs::OsRng
                .try_fill_bytes(&mut bytes)
                .map_err(|e| FleetError::Key(format!("no randomness: {e}")))?;
            // A value past the curve order (probability about 2^-190) is drawn again.
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return NodeKey::from_signing_key(key);
            }
        }
    }

    fn from_signing_key(key: SigningKey) -> Result<NodeKey, FleetError> {
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| FleetError::Key(e.to_string()))?
            .into_bytes();
        Ok(NodeKey { key, public_pem })
    }

    /// The key in `path` (PKCS#8 PEM), made and written there (owner-only) when missing.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, FleetError> {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                    FleetError::Key(format!("{}: not a P-384 PKCS#8 key: {e}", path.display()))
                })?;
                NodeKey::from_signing_key(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let node = NodeKey::generate()?;
                let pem = node
                    .key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| FleetError::Key(e.to_string()))?;
                write_private(path, pem.as_bytes())?;
                Ok(node)
            }
            Err(e) => Err(FleetError::Io(path.display().to_string(), e)),
        }
    }

    /// The public key in OpenSSH's one-line form (`ecdsa-sha2-nistp384 AAAA...`), as
    /// `flwr supernode register` reads it to list the node on a SuperLink run with
    /// `--enable-supernode-auth`.
    pub fn public_key_openssh(&self) -> String {
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut blob = Vec::new();
        for field in [&b"ecdsa-sha2-nistp384"[..], b"nistp384", point.as_bytes()] {
            blob.extend((field.len() as u32).to_be_bytes());
            blob.extend(field);
        }
        format!("ecdsa-sha2-nistp384 {}", STANDARD.encode(blob))
    }

    /// The public key as Flower sends it: PEM of the SubjectPublicKeyInfo.
    pub fn public_key_pem(&self) -> &[u8] {
        &self.public_pem
    }

    /// The `(name, value)` headers that authenticate one request signed now.
    pub fn auth_headers(&self) -> [(&'static str, String); 3] {
        self.auth_headers_at(SystemTime::now())
    }

    /// [`NodeKey::auth_headers`] for a request signed at `at`.
    pub fn auth_headers_at(&self, at: SystemTime) -> [(&'static str, String); 3] {
        let timestamp = iso8601_utc(at);
        // ECDSA with SHA-256, as Flower signs (not P-384's default SHA-384).
        // Never fails for a 32-byte hash (shorter than the curve's 48 bytes: zero-padded).
        let signature: Option<Signature> = self.key.sign_prehash(&Sha256::digest(&timestamp)).ok();
        let signature = signature
            .map(|s| s.to_der().as_bytes().to_vec())
            .unwrap_or_default();
        [
            (PUBLIC_KEY_HEADER, STANDARD.encode(&self.public_pem)),
            (TIMESTAMP_HEADER, timestamp),
            (SIGNATURE_HEADER, STANDARD.encode(signature)),
        ]
    }
}

/// Writes `bytes` to `path`, readable by the owner only, through a temporary file renamed
/// into place.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    let io = |e| FleetError::Io(path.display().to_string(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `at` as Python's `datetime.now(tz=UTC).isoformat()` writes it:
/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
pub fn iso8601_utc(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use p384::ecdsa::VerifyingKey;
    use p384::pkcs8::DecodePublicKey;
    use std::time::Duration;

    #[test]
    fn timestamps_read_like_python_isoformat() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_324_400_123_456);
        // date -u -d @1796324400: 2026-12-03 19:00:00 UTC
        assert_eq!(iso8601_utc(at), "2026-12-03T19:00:00.123456+00:00");
        assert_eq!(iso8601_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&iso8601_utc(leap)[..10], "2000-02-29");
    }

    #[test]
    fn headers_carry_a_signature_the_public_key_verifies() {
        let node = NodeKey::generate().unwrap();
        let [(_, pk), (_, ts), (_, sig)] = node.auth_headers();
        let pem = String::from_utf8(STANDARD.decode(pk).unwrap()).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let key = VerifyingKey::from_public_key_pem(&pem).unwrap();
        let sig = Signature::from_der(&STANDARD.decode(sig).unwrap()).unwrap();
        key.verify_prehash(&Sha256::digest(&ts), &sig).unwrap();
        assert!(key
            .verify_prehash(&Sha256::digest(b"another time"), &sig)
            .is_err());
    }

    #[test]
    fn the_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node").join("flower.key");
        let a = NodeKey::load_or_create(&path).unwrap();
        let b = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(a.public_key_pem(), b.public_key_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            NodeKey::load_or_create(&path),
            Err(FleetError::Key(_))
        ));
    }
}
