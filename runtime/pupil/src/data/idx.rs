//! The IDX format of the original MNIST files (LeCun et al.), also used by Fashion-MNIST: a
//! big-endian header of magic (`0x00000803` for u8 images `[n, rows, cols]`, `0x00000802`
//! for u8 vectors `[n, d]`, `0x00000801` for u8 labels `[n]`) and dimensions, then the
//! bytes. Devices keep their local examples in this format.

use std::path::Path;

use super::split::{Dataset, Split};
use super::DataError;

/// IDX magic of unsigned bytes; the low byte is the number of dimensions.
const IMAGE_MAGIC: u32 = 0x0800;
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

/// Reads an IDX file of unsigned bytes (magic `0x0000_08NN`, NN = dimensions, the first the
/// example count) and, when given, its IDX labels file (`0x0801`). Two dimensions make
/// feature vectors `[D]`, three make one-channel images `[1, H, W]`, four `[C, H, W]`.
/// Without a labels file every label is 0.
pub fn read_split(images: &Path, labels: Option<&Path>) -> Result<Split, DataError> {
    let bytes = read(images)?;
    let dims =
        match bytes.get(..4) {
            Some([0, 0, 0x08, d @ 2..=4]) => usize::from(*d),
            _ => return Err(bad(
                images,
                "not an IDX file of bytes with 2 to 4 dimensions (magic 0x00000802..0x00000804)",
            )),
        };
    let dims_shape = header(&bytes, images, IMAGE_MAGIC | dims as u32, dims)?;
    let n = dims_shape[0];
    let shape = match dims_shape[1..] {
        [h, w] => vec![1, h, w],
        ref rest => rest.to_vec(),
    };
    let labels = match labels {
        Some(path) => {
            let lb = read(path)?;
            let ls = header(&lb, path, LABELS, 1)?;
            if ls[0] != n {
                return Err(bad(path, format!("{} labels for {n} examples", ls[0])));
            }
            lb[8..].to_vec()
        }
        None => vec![0; n],
    };
    let start = 4 + 4 * dims;
    Split::new(&shape, bytes[start..].to_vec(), labels).map_err(|e| bad(images, e.to_string()))
}

/// Reads a data set kept as IDX files in `dir`: `train-images.idx`, `train-labels.idx`,
/// `test-images.idx` and `test-labels.idx` (as `models/fetch fashion` and `digits` write
/// them); refuses a test split of another shape.
pub fn read_dataset(dir: &Path) -> Result<Dataset, DataError> {
    let part = |name: &str| {
        read_split(
            &dir.join(format!("{name}-images.idx")),
            Some(&dir.join(format!("{name}-labels.idx"))),
        )
    };
    let (train, test) = (part("train")?, part("test")?);
    if train.shape != test.shape {
        return Err(bad(
            &dir.join("test-images.idx"),
            format!(
                "test examples are {:?} but training examples {:?}",
                test.shape, train.shape
            ),
        ));
    }
    Ok(Dataset { train, test })
}

/// Writes `split` as IDX files: its examples to `images` (one-channel images `[1, H, W]` as
/// the usual three dimensions) and, when given, its labels to `labels`.
pub fn write_split(split: &Split, images: &Path, labels: Option<&Path>) -> Result<(), DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let dims: Vec<usize> = match split.shape.as_slice() {
        [1, h, w] => vec![*h, *w],
        other => other.to_vec(),
    };
    if dims.is_empty() || dims.len() > 3 {
        return Err(bad(
            images,
            format!("cannot write examples of shape {:?} as IDX", split.shape),
        ));
    }
    let mut out = Vec::with_capacity(8 + 4 * dims.len() + split.images.len());
    out.extend_from_slice(&(IMAGE_MAGIC | (dims.len() as u32 + 1)).to_be_bytes());
    for w in std::iter::once(split.n).chain(dims) {
        out.extend_from_slice(&(w as u32).to_be_bytes());
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
        let split = Split::new(
            &[1, 28, 28],
            (0..3 * 784).map(|i| (i % 256) as u8).collect(),
            vec![3, 1, 9],
        )
        .unwrap();
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

    #[test]
    fn data_sets_read_from_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let split = |n: usize, side: usize| {
            Split::new(&[1, side, side], vec![7; n * side * side], vec![1; n]).unwrap()
        };
        let write = |name: &str, s: &Split| {
            let (i, l) = (format!("{name}-images.idx"), format!("{name}-labels.idx"));
            write_split(s, &d.join(i), Some(&d.join(l))).unwrap();
        };
        write("train", &split(3, 8));
        write("test", &split(2, 8));
        let data = read_dataset(d).unwrap();
        assert_eq!(
            (data.train.n, data.test.n, data.test.shape.clone()),
            (3, 2, vec![1, 8, 8])
        );
        write("test", &split(2, 4));
        assert!(read_dataset(d)
            .unwrap_err()
            .to_string()
            .contains("test examples"));
    }

    #[test]
    fn any_shape_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = (dir.path().join("i.idx"), dir.path().join("l.idx"));
        for shape in [vec![32], vec![1, 8, 8], vec![3, 4, 4]] {
            let dim: usize = shape.iter().product();
            let split =
                Split::new(&shape, (0..2 * dim).map(|i| i as u8).collect(), vec![11, 0]).unwrap();
            write_split(&split, &img, Some(&lab)).unwrap();
            assert_eq!(read_split(&img, Some(&lab)).unwrap(), split);
        }
    }
}
