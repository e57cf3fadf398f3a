//! The `.pupil` model file format and pupil's wire types.
//!
//! The crate builds `no_std` without an allocator (`--no-default-features`), so a
//! microcontroller can read a model in place: the manifest is bounded by heapless
//! types and the tensor table is decoded lazily, entries borrowing their names
//! from the file bytes. The `alloc` feature (part of the default `std`) adds
//! [`encode_file`] and the update encoders. Update messages, signed by devices
//! and sent upstream, are in [`update`]. The crate re-exports [`heapless`], whose bounded strings and
//! vectors appear in its types.
//!
//! # Byte layout (format version 1)
//!
//! All integers in the header are little-endian.
//!
//! | offset | size | field                                                     |
//! |--------|------|-----------------------------------------------------------|
//! | 0      | 8    | magic `PUPILMDL`                                          |
//! | 8      | 4    | format version, `u32` (= 1)                               |
//! | 12     | 4    | flags, `u32` (no flag is defined: must be 0)              |
//! | 16     | 4    | manifest length `M`, `u32` (32 ≤ M ≤ [`MAX_MANIFEST_LEN`])|
//! | 20     | 4    | reserved, `u32` (must be 0)                               |
//! | 24     | 8    | tensor data length `D`, `u64`                             |
//! | 32     | M    | manifest                                                  |
//! | 32 + M | pad  | zero bytes up to the next multiple of 64 (`data_start`)   |
//! | data_start | D | tensor data; the file ends exactly here                  |
//!
//! The manifest is:
//!
//! 1. the content hash: 32 raw bytes (file offset 32..64);
//! 2. [`ModelInfo`] in postcard (model id, architecture, config, version,
//!    parent hash, created-by);
//! 3. the tensor table in postcard: a varint count (≤ [`MAX_TENSORS`]), then per
//!    tensor its name (varint length + UTF-8, 1..=[`MAX_NAME_LEN`] bytes), dtype
//!    code (varint, see [`DType::code`]), shape (varint rank ≤ [`MAX_RANK`], then
//!    varint dims), offset and byte length (varints).
//!
//! Entries are sorted by name, strictly ascending bytewise (so names are unique).
//! Their offsets are relative to `data_start`, multiples of [`ALIGN`] and
//! ascending; tensors do not overlap, gaps between them are padding (written as
//! zeros, covered by the hash), and the last tensor ends exactly at `D` (0 without
//! tensors). Each byte length equals [`DType::byte_len`] of the dtype and shape,
//! computed without overflow.
//!
//! The content hash is SHA-256 over every byte of the file except the hash itself:
//! `file[0..32]` followed by `file[64..]`. It is the model's identity for sync, and
//! since it covers the header, the manifest, the padding and the data, any changed
//! byte makes the file fail to read.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

mod config;
mod dtype;
#[cfg(feature = "alloc")]
mod encode;
mod error;
mod hash;
mod header;
mod manifest;
mod table;
pub mod update;
mod view;

pub use config::{
    ConfigEntry, ConfigValue, MAX_CONFIG_ENTRIES, MAX_INTS, MAX_KEY_LEN, MAX_STR_LEN,
};
pub use dtype::{DType, ShapeError, QK, QK_K};
#[cfg(feature = "alloc")]
pub use encode::encode_file;
pub use error::FormatError;
pub use hash::{content_hash, seal, Hex};
pub use header::Header;
pub use heapless;
pub use manifest::{Manifest, ModelInfo, MAX_ARCH_LEN, MAX_CREATED_BY_LEN, MAX_ID_LEN};
pub use table::{Shape, TensorEntry, TensorIter, TensorTable};
pub use update::{
    key_id, Delta, Encoding, Envelope, KeyId, Metric, Update, UpdateError, MAX_DEVICE_ID_LEN,
    MAX_ENVELOPE_LEN, MAX_UPDATE_LEN,
};
pub use view::ModelView;

/// The 8 bytes every `.pupil` file starts with.
pub const MAGIC: [u8; 8] = *b"PUPILMDL";
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed file header in bytes.
pub const HEADER_LEN: usize = 32;
/// Size of the content hash (SHA-256) in bytes.
pub const HASH_LEN: usize = 32;
/// Alignment of the data section and of every tensor in it, in bytes.
pub const ALIGN: u64 = 64;
/// Largest manifest a reader accepts, in bytes (any model within the other limits fits).
pub const MAX_MANIFEST_LEN: u32 = 1 << 20;
/// Largest number of tensors in one file.
pub const MAX_TENSORS: u32 = 4096;
/// Largest tensor rank.
pub const MAX_RANK: usize = 8;
/// Longest tensor name in bytes.
pub const MAX_NAME_LEN: usize = 128;

#[cfg(all(test, feature = "alloc"))]
mod tests;
