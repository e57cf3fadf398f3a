//! A validated model file held in memory.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use pupil_wire::{DType, Manifest, ModelInfo, ModelView, TensorTable, HEADER_LEN};

use crate::convert;
use crate::error::ModelFileError;

/// How many tensor names a [`ModelFileError::NoSuchTensor`] lists.
const NAMES_LISTED: usize = 8;

/// A tensor's place in the file.
#[derive(Clone, Debug)]
struct Slot {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: Range<usize>,
}

/// A `.pupil` file read into memory and checked completely: header, manifest,
/// tensor table, layout and content hash.
#[derive(Clone, Debug)]
pub struct ModelFile {
    bytes: Vec<u8>,
    format_version: u32,
    content_hash: [u8; 32],
    info: ModelInfo,
    table: Range<usize>,
    count: u32,
    slots: Vec<Slot>,
}

/// One tensor of a [`ModelFile`], borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorView<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Its element type.
    pub dtype: DType,
    /// Its shape, outermost dimension first.
    pub shape: &'a [u64],
    /// Its raw little-endian bytes, 64-byte aligned within the file.
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// The number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The values as f32: floats convert, integers convert by value, and
    /// Block formats (Q8_0 .. Q6_K) dequantize.
    pub fn to_f32(&self) -> Vec<f32> {
        convert::to_f32(self.dtype, self.bytes)
    }
}

impl ModelFile {
    /// Reads and validates the model file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelFileError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes, || path.display().to_string())
    }

    /// Validates `bytes` as a model file and takes ownership of them.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ModelFileError> {
        Self::parse(bytes, || "model bytes".to_owned())
    }

    /// Validates `bytes`; `origin` names them in errors.
    fn parse(bytes: Vec<u8>, origin: impl Fn() -> String) -> Result<Self, ModelFileError> {
        let invalid = |source| ModelFileError::Invalid {
            origin: origin(),
            source,
        };
        let view = ModelView::parse(&bytes).map_err(invalid)?;
        let data_start = view.header.data_start() as usize;
        let mut slots = Vec::with_capacity(view.manifest.tensors.len() as usize);
        for entry in view.manifest.tensors.iter() {
            let entry = entry.map_err(invalid)?;
            let start = data_start + entry.offset as usize;
            slots.push(Slot {
                name: entry.name.to_owned(),
                dtype: entry.dtype,
                shape: entry.shape.to_vec(),
                data: start..start + entry.len as usize,
            });
        }
        let manifest_end = HEADER_LEN + view.header.manifest_len as usize;
        let table = manifest_end - view.manifest.tensors.as_bytes().len()..manifest_end;
        Ok(ModelFile {
            format_version: view.header.format_version,
            content_hash: view.manifest.content_hash,
            info: view.manifest.info.clone(),
            count: view.manifest.tensors.len(),
            table,
            slots,
            bytes,
        })
    }

    /// The manifest: model info, content hash and tensor table.
    pub fn manifest(&self) -> Manifest<'_> {
        Manifest {
            format_version: self.format_version,
            content_hash: self.content_hash,
            info: self.info.clone(),
            tensors: TensorTable::new(
                self.bytes.get(self.table.clone()).unwrap_or_default(),
                self.count,
            ),
        }
    }

    /// Model id, architecture, config, version and lineage.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The content hash: the model's identity for sync.
    pub fn content_hash(&self) -> [u8; 32] {
        self.content_hash
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All tensors, in name order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.slots.iter().map(|s| self.view(s))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, ModelFileError> {
        self.slots
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .map(|i| self.view(&self.slots[i]))
            .map_err(|_| self.no_such_tensor(name))
    }

    /// The tensor named `name` as f32 values (see [`TensorView::to_f32`]).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, ModelFileError> {
        self.tensor(name).map(|t| t.to_f32())
    }

    /// A view of the tensor in `slot`.
    fn view<'a>(&'a self, slot: &'a Slot) -> TensorView<'a> {
        TensorView {
            name: &slot.name,
            dtype: slot.dtype,
            shape: &slot.shape,
            bytes: self.bytes.get(slot.data.clone()).unwrap_or_default(),
        }
    }

    /// The error for a missing tensor, listing the first few names.
    fn no_such_tensor(&self, name: &str) -> ModelFileError {
        let mut available: Vec<&str> = self
            .slots
            .iter()
            .take(NAMES_LISTED)
            .map(|s| s.name.as_str())
            .collect();
        if self.slots.len() > NAMES_LISTED {
            available.push("…");
        }
        if available.is_empty() {
            available.push("(none)");
        }
        ModelFileError::NoSuchTensor {
            name: name.to_owned(),
            model: self.info.model_id.to_string(),
            available: available.join(", "),
        }
    }
}

impl fmt::Display for ModelFile {
    /// The manifest's readable table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.manifest().fmt(f)
    }
}
