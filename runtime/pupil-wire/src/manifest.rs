//! The manifest: content hash, model info and tensor table, and its readable form.

use core::fmt;

use heapless::{String, Vec};
use postcard::take_from_bytes;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigEntry, ConfigValue, MAX_CONFIG_ENTRIES};
use crate::table::ShapeDisplay;
use crate::{FormatError, Hex, TensorTable, MAX_TENSORS};

/// Longest model id in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest architecture name in bytes.
pub const MAX_ARCH_LEN: usize = 32;
/// Longest created-by string in bytes.
pub const MAX_CREATED_BY_LEN: usize = 64;

/// What a model is: identity, architecture and lineage. Stored in postcard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model id, e.g. `mnist-mlp`.
    pub model_id: String<MAX_ID_LEN>,
    /// Architecture name, e.g. `mlp`, `cnn`, `bert`, `llama`.
    pub arch: String<MAX_ARCH_LEN>,
    /// Architecture config, in insertion order.
    pub config: Vec<ConfigEntry, MAX_CONFIG_ENTRIES>,
    /// Model version number; refinements count up.
    pub version: u32,
    /// Content hash of the model this one was refined from.
    pub parent: Option<[u8; 32]>,
    /// The tool that wrote the file, e.g. `pupil 0.1.0`.
    pub created_by: String<MAX_CREATED_BY_LEN>,
}

impl ModelInfo {
    /// The config value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.config
            .iter()
            .find(|e| e.key.as_str() == key)
            .map(|e| &e.value)
    }
}

/// A decoded manifest. The tensor table is decoded lazily from the file bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest<'a> {
    /// Format version from the header.
    pub format_version: u32,
    /// SHA-256 over the whole file except this hash: the model's identity.
    pub content_hash: [u8; 32],
    /// Model identity, architecture and lineage.
    pub info: ModelInfo,
    /// The tensor table.
    pub tensors: TensorTable<'a>,
}

impl<'a> Manifest<'a> {
    /// Decodes the manifest bytes (hash, model info, table count). Table
    /// entries are not decoded here; [`crate::ModelView::parse`] checks them.
    pub fn decode(bytes: &'a [u8], format_version: u32) -> Result<Self, FormatError> {
        let (hash, rest) =
            bytes
                .split_first_chunk::<32>()
                .ok_or(FormatError::ManifestTooSmall {
                    len: bytes.len() as u32,
                })?;
        let (info, rest): (ModelInfo, _) =
            take_from_bytes(rest).map_err(|error| FormatError::MalformedManifest { error })?;
        let (count, rest): (u64, _) =
            take_from_bytes(rest).map_err(|error| FormatError::MalformedManifest { error })?;
        let count = u32::try_from(count)
            .ok()
            .filter(|&c| c <= MAX_TENSORS)
            .ok_or(FormatError::TooManyTensors { count })?;
        Ok(Manifest {
            format_version,
            content_hash: *hash,
            info,
            tensors: TensorTable::new(rest, count),
        })
    }
}

/// Writes `s` with control and other unprintable characters escaped.
fn escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    write!(f, "{}", s.escape_debug())
}

/// Writes `s` escaped, padded with spaces to `width` characters.
fn padded(f: &mut fmt::Formatter<'_>, s: &str, width: usize) -> fmt::Result {
    escaped(f, s)?;
    pad(f, width.saturating_sub(s.escape_debug().count()))
}

/// Writes `n` spaces.
fn pad(f: &mut fmt::Formatter<'_>, n: usize) -> fmt::Result {
    (0..n).try_for_each(|_| f.write_str(" "))
}

/// Counts the characters a value displays as.
struct Counter(usize);

impl fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.chars().count();
        Ok(())
    }
}

/// The number of characters `value` displays as.
fn width_of(value: impl fmt::Display) -> usize {
    let mut c = Counter(0);
    // Writing to a counter cannot fail.
    let _ = fmt::write(&mut c, format_args!("{value}"));
    c.0
}

/// Column widths of the tensor listing.
struct Widths {
    name: usize,
    shape: usize,
    offset: usize,
    len: usize,
    total: u64,
}

impl Widths {
    fn of(table: &TensorTable<'_>) -> Self {
        let mut w = Widths {
            name: "name".len(),
            shape: "shape".len(),
            offset: "offset".len(),
            len: "bytes".len(),
            total: 0,
        };
        for e in table.iter().flatten() {
            w.name = w.name.max(e.name.escape_debug().count());
            w.shape = w.shape.max(width_of(ShapeDisplay(&e.shape)));
            w.offset = w.offset.max(width_of(e.offset));
            w.len = w.len.max(width_of(e.len));
            w.total = w.total.saturating_add(e.len);
        }
        w
    }
}

impl fmt::Display for Manifest<'_> {
    /// A readable table: model fields, then one line per tensor.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.info;
        f.write_str("model      ")?;
        escaped(f, &info.model_id)?;
        f.write_str("\narch       ")?;
        escaped(f, &info.arch)?;
        f.write_str("\n")?;
        if info.config.is_empty() {
            f.write_str("config     -\n")?;
        }
        for (i, e) in info.config.iter().enumerate() {
            f.write_str(if i == 0 { "config     " } else { "           " })?;
            escaped(f, &e.key)?;
            writeln!(f, " = {}", e.value)?;
        }
        writeln!(f, "version    {}", info.version)?;
        writeln!(f, "hash       {}", Hex(&self.content_hash))?;
        match &info.parent {
            Some(p) => writeln!(f, "parent     {}", Hex(p))?,
            None => f.write_str("parent     -\n")?,
        }
        f.write_str("created by ")?;
        escaped(f, &info.created_by)?;
        writeln!(f, "\nformat     {}", self.format_version)?;
        let w = Widths::of(&self.tensors);
        writeln!(f, "tensors    {} ({} bytes)", self.tensors.len(), w.total)?;
        f.write_str("  ")?;
        padded(f, "name", w.name)?;
        writeln!(
            f,
            "  dtype  {:<sw$}  {:>ow$}  {:>lw$}",
            "shape",
            "offset",
            "bytes",
            sw = w.shape,
            ow = w.offset,
            lw = w.len
        )?;
        for entry in self.tensors.iter() {
            let e = match entry {
                Ok(e) => e,
                Err(err) => return writeln!(f, "  <unreadable: {err}>"),
            };
            f.write_str("  ")?;
            padded(f, e.name, w.name)?;
            write!(f, "  {:<5}  {}", e.dtype, ShapeDisplay(&e.shape))?;
            pad(f, w.shape.saturating_sub(width_of(ShapeDisplay(&e.shape))))?;
            writeln!(
                f,
                "  {:>ow$}  {:>lw$}",
                e.offset,
                e.len,
                ow = w.offset,
                lw = w.len
            )?;
        }
        Ok(())
    }
}
