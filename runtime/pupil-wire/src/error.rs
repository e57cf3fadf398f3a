//! Why a `.pupil` file cannot be read.

use core::fmt;

use crate::hash::Hex;
use crate::{
    ShapeError, ALIGN, FORMAT_VERSION, HEADER_LEN, MAX_MANIFEST_LEN, MAX_NAME_LEN, MAX_RANK,
    MAX_TENSORS,
};

/// Advice for damaged files.
const CORRUPT: &str = "the file is corrupt — download or copy it again";
/// Advice for incomplete files.
const INCOMPLETE: &str = "the file is incomplete — download or copy it again";

/// Everything that can be wrong with a `.pupil` file. Each variant names the
/// problem, the numbers involved and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The file is shorter than the fixed header.
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// The file does not start with `PUPILMDL`.
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// The format version is not one this crate reads.
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// Header flags are set that this crate does not know.
    UnsupportedFlags {
        /// The flags found.
        flags: u32,
    },
    /// The reserved header field is not zero.
    ReservedNotZero {
        /// The value found.
        value: u32,
    },
    /// The declared manifest is larger than any valid manifest.
    ManifestTooLarge {
        /// The declared length.
        len: u64,
    },
    /// The declared manifest cannot even hold the content hash.
    ManifestTooSmall {
        /// The declared length.
        len: u32,
    },
    /// The file ends inside the manifest.
    TruncatedManifest {
        /// Manifest length declared by the header.
        declared: u64,
        /// Bytes left after the header.
        available: u64,
    },
    /// The file ends inside the tensor data.
    TruncatedData {
        /// Data length declared by the header.
        declared: u64,
        /// Bytes left after the manifest and its padding.
        available: u64,
    },
    /// The file continues after the declared tensor data.
    TrailingBytes {
        /// Number of unexpected bytes.
        extra: u64,
    },
    /// The model info part of the manifest does not decode.
    MalformedManifest {
        /// The decoder's complaint.
        error: postcard::Error,
    },
    /// The tensor table declares more tensors than allowed.
    TooManyTensors {
        /// The declared count.
        count: u64,
    },
    /// A tensor table entry does not decode.
    MalformedEntry {
        /// The entry's position in the table.
        index: u32,
        /// The decoder's complaint.
        error: postcard::Error,
    },
    /// A tensor name is empty or too long.
    BadNameLength {
        /// The entry's position in the table.
        index: u32,
        /// The name's length in bytes.
        len: u64,
    },
    /// A tensor name is not UTF-8.
    NameNotUtf8 {
        /// The entry's position in the table.
        index: u32,
    },
    /// A tensor's dtype code is unknown.
    UnknownDType {
        /// The entry's position in the table.
        index: u32,
        /// The code found.
        code: u32,
    },
    /// A tensor has too many dimensions.
    RankTooLarge {
        /// The entry's position in the table.
        index: u32,
        /// The declared rank.
        rank: u32,
    },
    /// A tensor's shape cannot hold its dtype.
    BadShape {
        /// The entry's position in the table.
        index: u32,
        /// What is wrong with the shape.
        error: ShapeError,
    },
    /// A tensor's byte length disagrees with its dtype and shape.
    LengthMismatch {
        /// The entry's position in the table.
        index: u32,
        /// The length in the table.
        declared: u64,
        /// The length the dtype and shape need.
        expected: u64,
    },
    /// A tensor's offset is not a multiple of [`ALIGN`].
    MisalignedTensor {
        /// The entry's position in the table.
        index: u32,
        /// The offset found.
        offset: u64,
    },
    /// A tensor name is not strictly greater than the one before it.
    NamesNotSorted {
        /// The entry's position in the table.
        index: u32,
    },
    /// A tensor starts before the previous one ends.
    OverlappingTensors {
        /// The entry's position in the table.
        index: u32,
        /// Its offset.
        offset: u64,
        /// Where the previous tensor ends.
        prev_end: u64,
    },
    /// A tensor reaches past the end of the data section.
    TensorOutOfBounds {
        /// The entry's position in the table.
        index: u32,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The data section's length.
        data_len: u64,
    },
    /// The manifest's content is not exactly as long as the header says.
    ManifestLengthMismatch {
        /// The length in the header.
        declared: u64,
        /// The bytes the manifest's content occupies.
        used: u64,
    },
    /// The data section is not exactly as long as its tensors.
    DataLengthMismatch {
        /// The length in the header.
        declared: u64,
        /// Where the last tensor ends.
        used: u64,
    },
    /// The content hash does not match the file's bytes.
    HashMismatch {
        /// The hash stored in the manifest.
        stored: [u8; 32],
        /// The hash of the bytes.
        computed: [u8; 32],
    },
    /// Encoding a file failed.
    Encode {
        /// The encoder's complaint.
        error: postcard::Error,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "file too short: {len} bytes, but the header alone is {HEADER_LEN}; it is not a .pupil model or it was cut off — download or copy it again"
            ),
            Self::BadMagic { found } => write!(
                f,
                "not a .pupil model: the file starts with \"{}\" instead of \"PUPILMDL\"; pass a model file written by pupil",
                found.escape_ascii()
            ),
            Self::UnsupportedVersion { found } => write!(
                f,
                "unsupported format version {found}: this pupil reads version {FORMAT_VERSION}; upgrade pupil or export the model again"
            ),
            Self::UnsupportedFlags { flags } => write!(
                f,
                "unsupported header flags {flags:#010x}: this pupil knows none; upgrade pupil or export the model again"
            ),
            Self::ReservedNotZero { value } => write!(
                f,
                "reserved header field is {value:#010x} instead of 0; {CORRUPT}"
            ),
            Self::ManifestTooLarge { len } => write!(
                f,
                "manifest too large: header declares {len} bytes, the limit is {MAX_MANIFEST_LEN}; {CORRUPT}"
            ),
            Self::ManifestTooSmall { len } => write!(
                f,
                "manifest too small: header declares {len} bytes, fewer than its 32-byte content hash; {CORRUPT}"
            ),
            Self::TruncatedManifest { declared, available } => write!(
                f,
                "file truncated: header declares manifest of {declared} bytes but only {available} remain; {INCOMPLETE}"
            ),
            Self::TruncatedData { declared, available } => write!(
                f,
                "file truncated: header declares {declared} bytes of tensor data but only {available} remain; {INCOMPLETE}"
            ),
            Self::TrailingBytes { extra } => write!(
                f,
                "file has {extra} unexpected bytes after its tensor data; {CORRUPT}"
            ),
            Self::MalformedManifest { error } => {
                write!(f, "manifest does not decode ({error}); {CORRUPT}")
            }
            Self::TooManyTensors { count } => write!(
                f,
                "tensor table declares {count} tensors, the limit is {MAX_TENSORS}; {CORRUPT}"
            ),
            Self::MalformedEntry { index, error } => {
                write!(f, "tensor #{index} does not decode ({error}); {CORRUPT}")
            }
            Self::BadNameLength { index, len } => write!(
                f,
                "tensor #{index} has a {len}-byte name, names must be 1 to {MAX_NAME_LEN} bytes; {CORRUPT}"
            ),
            Self::NameNotUtf8 { index } => {
                write!(f, "tensor #{index} has a name that is not UTF-8; {CORRUPT}")
            }
            Self::UnknownDType { index, code } => write!(
                f,
                "tensor #{index} has unknown dtype code {code}; upgrade pupil, or {CORRUPT}"
            ),
            Self::RankTooLarge { index, rank } => write!(
                f,
                "tensor #{index} has {rank} dimensions, the limit is {MAX_RANK}; {CORRUPT}"
            ),
            Self::BadShape { index, error } => {
                write!(f, "tensor #{index} has an invalid shape: {error}; {CORRUPT}")
            }
            Self::LengthMismatch { index, declared, expected } => write!(
                f,
                "tensor #{index} declares {declared} bytes but its dtype and shape need {expected}; {CORRUPT}"
            ),
            Self::MisalignedTensor { index, offset } => write!(
                f,
                "tensor #{index} starts at offset {offset}, not a multiple of {ALIGN}; {CORRUPT}"
            ),
            Self::NamesNotSorted { index } => write!(
                f,
                "tensor #{index} repeats or is out of name order (names must be unique and sorted); {CORRUPT}"
            ),
            Self::OverlappingTensors { index, offset, prev_end } => write!(
                f,
                "tensor #{index} starts at offset {offset}, before the previous tensor ends at {prev_end}; {CORRUPT}"
            ),
            Self::TensorOutOfBounds { index, offset, len, data_len } => write!(
                f,
                "tensor #{index} spans bytes {offset}..{offset}+{len}, past the {data_len}-byte data section; {CORRUPT}"
            ),
            Self::ManifestLengthMismatch { declared, used } => write!(
                f,
                "header declares a {declared}-byte manifest but its content takes {used} bytes; {CORRUPT}"
            ),
            Self::DataLengthMismatch { declared, used } => write!(
                f,
                "header declares {declared} bytes of tensor data but the tensors end at {used}; {CORRUPT}"
            ),
            Self::HashMismatch { stored, computed } => write!(
                f,
                "content hash mismatch: the manifest says {}…, the bytes hash to {}…; {CORRUPT}",
                Hex(&stored[..8]),
                Hex(&computed[..8])
            ),
            Self::Encode { error } => write!(
                f,
                "could not encode the model file ({error}); this is a bug in the writer, please report it"
            ),
        }
    }
}

impl core::error::Error for FormatError {}
