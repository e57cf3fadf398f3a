//! A device's sync state in one directory, the same for the `pupil` CLI and for apps:
//! `device.key` (its Ed25519 key, 0600), `device.id` (the id it registered with),
//! `server.pub` (the pinned server key, hex), `outbox/` (queued signed updates and top-k
//! residuals) and `personal.pupil` (personal tensors, a head or an adapter, that never leave
//! the device and replace the shared version's own when the device runs it).

use std::fs;
use std::path::{Path, PathBuf};

use pupil_format::{DType, ModelBuilder, ModelFile};

use super::update::{NamedValues, Queued, UpdateOptions};
use super::Outbox;
#[cfg(feature = "http")]
use super::{Client, PushReport};
use crate::error::io_err;
use crate::keys::KeyPair;
use crate::{fsutil, hex, SyncError};

/// The directory holding one device's key, id, pinned server key and outbox.
#[derive(Clone, Debug)]
pub struct DeviceDir {
    root: PathBuf,
}

impl DeviceDir {
    /// Opens (or creates) the device directory `root`.
    pub fn open(root: &Path) -> Result<Self, SyncError> {
        fs::create_dir_all(root).map_err(io_err("create directory", root))?;
        Ok(DeviceDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The device key, created on first use.
    pub fn key(&self) -> Result<KeyPair, SyncError> {
        KeyPair::load_or_create(&self.root.join("device.key"))
    }

    /// The outbox.
    pub fn outbox(&self) -> Result<Outbox, SyncError> {
        Outbox::open(&self.root.join("outbox"))
    }

    /// The id this device registered with.
    pub fn device_id(&self) -> Result<String, SyncError> {
        let path = self.root.join("device.id");
        match fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            Ok(_) => Err(SyncError::InvalidArgument(format!(
                "{} is empty; run `pupil sync register --dir {} --device-id ID`",
                path.display(),
                self.root.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SyncError::InvalidArgument(format!(
                    "the device in {} is not registered: run `pupil sync register --dir {} \
                     --device-id ID` first",
                    self.root.display(),
                    self.root.display()
                )))
            }
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Records the id the device registered with.
    pub fn set_device_id(&self, id: &str) -> Result<(), SyncError> {
        fsutil::write_atomic(&self.root.join("device.id"), id.as_bytes(), 0o600)
    }

    /// The pinned server key, if one was pinned.
    pub fn server_key(&self) -> Result<Option<[u8; 32]>, SyncError> {
        let path = self.server_key_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        hex::decode(text.trim()).map(Some).ok_or_else(|| {
            SyncError::InvalidArgument(format!(
                "{} does not hold a server key (64 hex digits); delete it and pin the key again \
                 with --server-key",
                path.display()
            ))
        })
    }

    /// Pins `key` as the server's key (checked: 64 hex digits) and returns it.
    pub fn pin_server_key(&self, key: &str) -> Result<[u8; 32], SyncError> {
        let parsed: [u8; 32] = hex::decode(key.trim()).ok_or_else(|| {
            SyncError::InvalidArgument(format!(
                "the server key {key:?} is not 64 hex digits; copy it from `pupil serve`'s \
                 output or the server's /v1/server-key"
            ))
        })?;
        fsutil::write_atomic(
            &self.server_key_path(),
            hex::encode(&parsed).as_bytes(),
            0o644,
        )?;
        Ok(parsed)
    }

    /// Where the pinned server key lives.
    pub fn server_key_path(&self) -> PathBuf {
        self.root.join("server.pub")
    }

    /// Where the personal tensors live.
    pub fn personal_path(&self) -> PathBuf {
        self.root.join("personal.pupil")
    }

    /// Keeps the tensors of `refined` whose names start with one of `prefixes` as this
    /// device's personal ones (replacing those kept before); returns how many it kept.
    pub fn keep_personal(
        &self,
        refined: &[NamedValues],
        prefixes: &[&str],
    ) -> Result<usize, SyncError> {
        let mut b = ModelBuilder::new("personal", "personal")?;
        let mut kept = 0;
        for (name, shape, values) in refined {
            if prefixes.iter().any(|p| name.starts_with(p)) {
                b.add_f32(name, shape, values)?;
                kept += 1;
            }
        }
        b.write_atomic(self.personal_path())?;
        Ok(kept)
    }

    /// The model this device runs: `shared` (the version it pulled) with its personal
    /// tensors in place of the shared ones of the same name and shape. Without personal
    /// tensors it is `shared` itself.
    pub fn with_personal(&self, shared: &ModelFile) -> Result<ModelFile, SyncError> {
        let path = self.personal_path();
        if !path.is_file() {
            return Ok(ModelFile::from_bytes(shared.as_bytes().to_vec())?);
        }
        let personal = ModelFile::open(&path)?;
        let info = shared.info();
        let mut b = ModelBuilder::new(&info.model_id, &info.arch)?;
        b.version(info.version).parent(Some(shared.content_hash()));
        for entry in &info.config {
            b.config(&entry.key, entry.value.clone())?;
        }
        for t in shared.tensors() {
            let own = personal.tensor(t.name).ok().filter(|p| {
                p.shape == t.shape && matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16)
            });
            match own {
                Some(p) => b.add_f32_as(t.name, t.dtype, t.shape, &p.to_f32())?,
                None => b.add_tensor(t.name, t.dtype, t.shape, t.bytes.to_vec())?,
            };
        }
        Ok(ModelFile::from_bytes(b.to_bytes()?)?)
    }

    /// Builds the update from `base` to `refined` with this device's id and key and queues
    /// it in its outbox (see [`Outbox::queue_update`]). `options.device_id` is ignored.
    pub fn queue_update(
        &self,
        base: &ModelFile,
        refined: &[NamedValues],
        options: &UpdateOptions<'_>,
    ) -> Result<Queued, SyncError> {
        let id = self.device_id()?;
        let options = UpdateOptions {
            device_id: &id,
            ..options.clone()
        };
        self.outbox()?
            .queue_update(&self.key()?, base, refined, &options)
    }

    #[cfg(feature = "http")]
    /// Pushes this device's outbox through `client`, every request signed with
    /// this device's key (see [`Client::push`]).
    pub fn push(&self, client: &Client) -> Result<PushReport, SyncError> {
        client.push(&self.key()?, &self.outbox()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys_are_kept_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeviceDir::open(&dir.path().join("dev")).unwrap();
        assert!(d
            .device_id()
            .unwrap_err()
            .to_string()
            .contains("pupil sync register"));
        d.set_device_id("phone-1").unwrap();
        assert_eq!(d.device_id().unwrap(), "phone-1");
        assert_eq!(d.server_key().unwrap(), None);
        assert!(d.pin_server_key("zz").is_err());
        assert_eq!(d.server_key().unwrap(), None, "a bad key is not saved");
        let k = d.pin_server_key(&"ab".repeat(32)).unwrap();
        assert_eq!(d.server_key().unwrap(), Some(k));
        assert_eq!(d.key().unwrap().public(), d.key().unwrap().public());
    }

    #[test]
    fn personal_tensors_stay_and_replace_the_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeviceDir::open(dir.path()).unwrap();
        let mut b = ModelBuilder::new("m", "mlp").unwrap();
        b.add_f32("body.w", &[2], &[1.0, 2.0]).unwrap();
        b.add_f32("head.w", &[2], &[3.0, 4.0]).unwrap();
        let shared = ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap();
        let same = d.with_personal(&shared).unwrap();
        assert_eq!(same.content_hash(), shared.content_hash());
        let refined = vec![
            ("body.w".to_string(), vec![2], vec![1.5, 2.5]),
            ("head.w".to_string(), vec![2], vec![9.0, 8.0]),
        ];
        assert_eq!(d.keep_personal(&refined, &["head."]).unwrap(), 1);
        let mine = d.with_personal(&shared).unwrap();
        assert_eq!(mine.to_f32("head.w").unwrap(), [9.0, 8.0]);
        assert_eq!(
            mine.to_f32("body.w").unwrap(),
            [1.0, 2.0],
            "the body stays shared"
        );
        assert_eq!(mine.info().model_id.as_str(), "m");
    }
}
