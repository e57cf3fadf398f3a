//! Replacing a file atomically: write a temporary file beside it, sync it,
//! rename it over the target, sync the directory.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ModelFileError;

/// Distinguishes temporary files of concurrent writes within one process.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Maps an I/O error of `action` on `path`.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ModelFileError {
    let path = path.to_path_buf();
    move |source| ModelFileError::Io {
        action,
        path,
        source,
    }
}

/// Writes `bytes` to `path` so that readers see either the old file or the
/// complete new one, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelFileError> {
    let name = path.file_name().ok_or_else(|| {
        io_err("write", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}-{}.pupil.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_and_rename(&tmp, path, bytes).and_then(|()| sync_dir(dir));
    if result.is_err() {
        // Best effort: the temporary file may not exist or may already be renamed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes and syncs `tmp`, then renames it to `path`.
fn write_and_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), ModelFileError> {
    // The file is closed at the end of this block, before the rename (which Windows refuses
    // for an open file).
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io_err("create", tmp))?;
        file.write_all(bytes).map_err(io_err("write", tmp))?;
        file.sync_all().map_err(io_err("sync", tmp))?;
    }
    fs::rename(tmp, path).map_err(io_err("rename the temporary file over", path))
}

/// Syncs directory `dir` so that the rename is durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), ModelFileError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Directories cannot be opened for syncing here; the rename is all we can do.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), ModelFileError> {
    Ok(())
}
