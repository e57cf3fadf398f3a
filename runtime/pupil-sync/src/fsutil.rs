//! Durable file writes: write a temporary file, fsync it, rename it into
//! place, fsync the directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io_err, SyncError};

/// Distinguishes temporary files of concurrent writes within one process.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that readers see the old file or the complete
/// new one, even across a crash; `mode` sets Unix permission bits.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SyncError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_new(&tmp, bytes, mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("rename into place", path)))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        // Best effort: the temporary file may not exist or may be renamed already.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` (which must not exist) with `bytes`, synced to disk.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SyncError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_err("create", path))?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("sync", path))
}

/// Syncs directory `dir` so that renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SyncError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
