//! Why an update message or its envelope cannot be read or written.

use core::fmt;

use super::{MAX_DELTA_ELEMENTS, MAX_DELTA_TENSORS, MAX_METRICS, UPDATE_VERSION};
use crate::MAX_RANK;

/// Advice for a malformed message: the sender must rebuild it.
const REBUILD: &str = "the update is malformed — rebuild it with pupil's encoder and send it again";

/// Everything that can be wrong with an update message. Each variant names the
/// problem, the numbers involved and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// The envelope or body is larger than the limit.
    TooLarge {
        /// What is too large: `envelope` or `body`.
        what: &'static str,
        /// Its length in bytes.
        len: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The envelope does not start with `PUPILUPD`.
    BadMagic,
    /// The bytes end before a field is complete, or a field does not decode.
    Malformed {
        /// The field, e.g. `device id`.
        field: &'static str,
        /// The decoder's complaint.
        error: postcard::Error,
    },
    /// Bytes follow the last field.
    TrailingBytes {
        /// What they follow: `envelope` or `body`.
        what: &'static str,
        /// Their number.
        extra: u64,
    },
    /// The body's version is not one this crate reads.
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// A string field is empty or longer than its limit.
    BadLength {
        /// The field, e.g. `model id`.
        field: &'static str,
        /// Its length in bytes.
        len: u64,
        /// The longest allowed.
        max: usize,
    },
    /// A string field is not UTF-8.
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// More metrics than [`MAX_METRICS`].
    TooManyMetrics {
        /// The declared count.
        count: u64,
    },
    /// A metric value is NaN or infinite.
    NonFiniteMetric {
        /// The metric's position.
        index: u32,
    },
    /// More delta tensors than [`MAX_DELTA_TENSORS`].
    TooManyDeltas {
        /// The declared count.
        count: u64,
    },
    /// Delta names repeat or are not in ascending order.
    NamesNotSorted {
        /// The delta's position.
        index: u32,
    },
    /// A delta has too many dimensions.
    RankTooLarge {
        /// The delta's position.
        index: u32,
        /// The declared rank.
        rank: u64,
    },
    /// A delta's shape has more elements than [`MAX_DELTA_ELEMENTS`].
    TooManyElements {
        /// The delta's position.
        index: u32,
    },
    /// A delta's encoding code is unknown.
    UnknownEncoding {
        /// The delta's position.
        index: u32,
        /// The code found.
        code: u32,
    },
    /// A delta's byte array disagrees with its shape and encoding.
    DataLength {
        /// The delta's position.
        index: u32,
        /// Which array: `values`, `scales` or `indices`.
        part: &'static str,
        /// Its length in bytes.
        len: u64,
        /// The length the shape and encoding need.
        expected: u64,
    },
    /// A top-k delta lists more entries than its tensor has elements.
    TopKTooLarge {
        /// The delta's position.
        index: u32,
        /// The number of entries.
        k: u64,
        /// The tensor's element count.
        elements: u64,
    },
    /// A top-k index is out of range, repeated or not ascending.
    BadIndex {
        /// The delta's position.
        index: u32,
        /// The offending entry's position in the index list.
        position: u64,
    },
    /// A delta value or scale is NaN or infinite.
    NonFinite {
        /// The delta's position.
        index: u32,
    },
    /// The values given to an encoder do not match the shape, or a dense
    /// buffer does not match a delta.
    ValueCount {
        /// The element count the shape needs.
        expected: u64,
        /// The values given.
        got: u64,
    },
    /// Encoding failed.
    Encode {
        /// The encoder's complaint.
        error: postcard::Error,
    },
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { what, len, max } => write!(
                f,
                "update {what} is {len} bytes, the limit is {max}; send a smaller delta (top-k or int8 encoding, fewer tensors)"
            ),
            Self::BadMagic => write!(
                f,
                "not a signed pupil update: the bytes do not start with \"PUPILUPD\"; send an envelope built by pupil"
            ),
            Self::Malformed { field, error } => {
                write!(f, "update {field} does not decode ({error}); {REBUILD}")
            }
            Self::TrailingBytes { what, extra } => {
                write!(f, "update {what} has {extra} unexpected bytes at its end; {REBUILD}")
            }
            Self::UnsupportedVersion { found } => write!(
                f,
                "update version {found} is not supported, this pupil reads version {UPDATE_VERSION}; upgrade pupil on one side"
            ),
            Self::BadLength { field, len, max } => write!(
                f,
                "update {field} is {len} bytes but must be 1 to {max}; use a shorter, non-empty one"
            ),
            Self::NotUtf8 { field } => write!(f, "update {field} is not UTF-8; {REBUILD}"),
            Self::TooManyMetrics { count } => write!(
                f,
                "update declares {count} metrics, the limit is {MAX_METRICS}; report fewer metrics"
            ),
            Self::NonFiniteMetric { index } => write!(
                f,
                "update metric #{index} is NaN or infinite; report finite metrics only"
            ),
            Self::TooManyDeltas { count } => write!(
                f,
                "update declares {count} delta tensors, the limit is {MAX_DELTA_TENSORS}; send fewer tensors"
            ),
            Self::NamesNotSorted { index } => write!(
                f,
                "delta #{index} repeats or is out of name order (names must be unique and sorted); {REBUILD}"
            ),
            Self::RankTooLarge { index, rank } => write!(
                f,
                "delta #{index} has {rank} dimensions, the limit is {MAX_RANK}; {REBUILD}"
            ),
            Self::TooManyElements { index } => write!(
                f,
                "delta #{index} has more than {MAX_DELTA_ELEMENTS} elements; split the tensor"
            ),
            Self::UnknownEncoding { index, code } => write!(
                f,
                "delta #{index} has unknown encoding code {code}; upgrade pupil on the receiving side"
            ),
            Self::DataLength { index, part, len, expected } => write!(
                f,
                "delta #{index} has {len} bytes of {part} but its shape and encoding need {expected}; {REBUILD}"
            ),
            Self::TopKTooLarge { index, k, elements } => write!(
                f,
                "delta #{index} lists {k} top-k entries for a tensor of {elements} elements; {REBUILD}"
            ),
            Self::BadIndex { index, position } => write!(
                f,
                "delta #{index} top-k index #{position} is out of range or not strictly ascending; {REBUILD}"
            ),
            Self::NonFinite { index } => write!(
                f,
                "delta #{index} holds NaN or infinite values; skip the update when training diverged, or use int8 encoding for values beyond f16's range"
            ),
            Self::ValueCount { expected, got } => write!(
                f,
                "{got} values given where the shape has {expected} elements; pass exactly one value per element"
            ),
            Self::Encode { error } => write!(
                f,
                "could not encode the update ({error}); this is a bug in the writer, please report it"
            ),
        }
    }
}

impl core::error::Error for UpdateError {}
