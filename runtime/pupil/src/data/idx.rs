//! The IDX format of the original MNIST files (LeCun et al.): a big-endian header of magic
//! (`0x00000803` for u8 images `[n, rows, cols]`, `0x00000801` for u8 labels `[n]`) and
//! dimensions, then the bytes. Devices keep their local digits in this format.

use std::path::Path;

use super::mnist::{Split, PIXELS, SIDE};
use super::DataError;

const IMAGES: u32 = 0x0803;
const LABELS: u32 = 0x0801;

fn bad(path: &Path, why: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        reason: why.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>, DataError> {
    let need = 4 + 4 * dims;
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() >= 4 && word(0) != magic {
        return Err(bad(
            path,
            format!("magic {:#010x}, expected {magic:#010x}", word(0)),
        ));
    }
    if bytes.len() < need {
        return Err(bad(path, "shorter than its header"));
    }
    let shape: Vec<usize> = (0..dims).map(|d| word(4 + 4 * d) as usize).collect();
    let body = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if body != Some(bytes.len() - need) {
        return Err(bad(
            path,
            format!(
                "header declares {shape:?} but {} data bytes follow",
                bytes.len() - need
            ),
        ));
    }
    Ok(shape)
}

/// Read 28 x 28 images, and labels when `labels` is given (else every label is 0).
pub fn read_split(images: &Path, labels: Option<&Path>) -> Result<Split, DataError> {
    let bytes = read(images)?;
    let shape = header(&bytes, images, IMAGES, 3)?;
    if shape[1] != SIDE || shape[2] != SIDE {
        return Err(bad(
            images,
            format!("images are {}x{}, not 28x28", shape[1], shape[2]),
        ));
    }
    let n = shape[0];
    let labels = match labels {
        Some(path) => {
            let lb = read(path)?;
            let ls = header(&lb, path, LABELS, 1)?;
            if ls[0] != n {
                return Err(bad(path, format!("{} labels for {n} images", ls[0])));
            }
            if let Some(y) = lb[8..].iter().find(|&&y| y > 9) {
                return Err(bad(path, format!("label {y} is not a digit")));
            }
            lb[8..].to_vec()
        }
        None => vec![0; n],
    };
    Ok(Split {
        images: bytes[16..].to_vec(),
        labels,
        n,
    })
}

/// Write `split`'s images (and labels, when `labels` is given) in IDX format.
pub fn write_split(split: &Split, images: &Path, labels: Option<&Path>) -> Result<(), DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let mut out = Vec::with_capacity(16 + split.n * PIXELS);
    for w in [IMAGES, split.n as u32, SIDE as u32, SIDE as u32] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.extend_from_slice(&split.images);
    std::fs::write(images, out).map_err(io(images))?;
    if let Some(path) = labels {
        let mut out = Vec::with_capacity(8 + split.n);
        for w in [LABELS, split.n as u32] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&split.labels);
        std::fs::write(path, out).map_err(io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = (dir.path().join("i.idx"), dir.path().join("l.idx"));
        let split = Split {
            images: (0..3 * PIXELS).map(|i| (i % 256) as u8).collect(),
            labels: vec![3, 1, 9],
            n: 3,
        };
        write_split(&split, &img, Some(&lab)).unwrap();
        assert_eq!(read_split(&img, Some(&lab)).unwrap(), split);
        assert_eq!(read_split(&img, None).unwrap().labels, vec![0, 0, 0]);
        let bytes = std::fs::read(&img).unwrap();
        std::fs::write(&img, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_split(&img, None)
            .unwrap_err()
            .to_string()
            .contains("data bytes follow"));
        assert!(read_split(&lab, None)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
