//! Ed25519 keys of devices and of the server, kept in files readable by their
//! owner only (mode 0600), created on first use.

use std::fs;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use pupil_wire::{key_id, KeyId};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::error::{io_err, SyncError};
use crate::fsutil;

/// An Ed25519 key pair: a device's (signing updates) or the server's
/// (signing published models).
#[derive(Clone, Debug)]
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        StdRng::from_os_rng().fill_bytes(&mut seed);
        Self::from_seed(seed)
    }

    /// The key with secret `seed` (for tests and imports).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the 32-byte secret key at `path`, or creates one there (mode
    /// 0600, written durably) when the file does not exist. Refuses a key
    /// file other users can read.
    pub fn load_or_create(path: &Path) -> Result<Self, SyncError> {
        match fs::read(path) {
            Ok(bytes) => {
                check_mode(path)?;
                let seed: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| SyncError::BadKeyFile {
                            path: path.to_path_buf(),
                            len: bytes.len() as u64,
                        })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
                }
                let key = Self::generate();
                fsutil::write_atomic(path, &key.signing.to_bytes(), 0o600)?;
                Ok(key)
            }
            Err(e) => Err(io_err("read", path)(e)),
        }
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The public key's id, as carried in update envelopes.
    pub fn key_id(&self) -> KeyId {
        key_id(&self.public())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// Whether `signature` is `public`'s valid signature of `message` (strict
/// verification: no malleable or small-order forgeries).
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public).is_ok_and(|k| {
        k.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}

/// Refuses a key file with group or other permission bits.
#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), SyncError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(io_err("inspect", path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SyncError::KeyFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Permission bits are a Unix notion.
#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), SyncError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_or_create_keeps_the_key_and_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/device.key");
        let a = KeyPair::load_or_create(&path).unwrap();
        let b = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = KeyPair::load_or_create(&path).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            KeyPair::load_or_create(&path),
            Err(SyncError::BadKeyFile { len: 5, .. })
        ));
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_message() {
        let k = KeyPair::from_seed([1; 32]);
        let other = KeyPair::from_seed([2; 32]);
        let sig = k.sign(b"hello");
        assert!(verify(&k.public(), b"hello", &sig));
        assert!(!verify(&k.public(), b"hellp", &sig));
        assert!(!verify(&other.public(), b"hello", &sig));
        assert!(!verify(&k.public(), b"hello", &[0; 64]));
        assert_ne!(k.key_id(), other.key_id());
    }
}
