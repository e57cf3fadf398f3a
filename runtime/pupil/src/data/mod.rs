//! Real data sets read from paths, or from the local cache that `models/fetch` fills. The
//! library never downloads: fetching is tooling (the `pupil` CLI, the tests), outside it.

pub mod idx;
pub mod labelled_text;
pub mod mnist;
pub mod sentences;
pub mod shift;
pub mod split;

pub use labelled_text::LabelledText;
pub use mnist::Mnist;
pub use split::{Dataset, Split};

use std::path::{Path, PathBuf};
use thiserror::Error;

/// What can go wrong while finding or reading a data set.
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
    /// A data set is not in the folder it was looked for in.
    #[error("{name} is not in {dir}; run `models/fetch {name}` (the `pupil` commands fetch it themselves), point PUPIL_CACHE at a folder holding it, or load it from its folder (e.g. Mnist::load_from)")]
    Missing {
        /// The data set (a `models/fetch` name).
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
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
    /// A labelled text file is not one `label<TAB>text` per line.
    #[error("{origin}: {why}; write one `label<TAB>text` per line")]
    Text {
        /// The file (or other source).
        origin: String,
        /// What is wrong.
        why: String,
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
