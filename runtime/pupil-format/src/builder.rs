//! Building a model file from named tensors.

use std::collections::BTreeMap;
use std::path::Path;

use pupil_wire::heapless::{String as BoundedString, Vec as BoundedVec};
use pupil_wire::{
    encode_file, ConfigEntry, ConfigValue, DType, ModelInfo, Shape, TensorEntry, ALIGN, HASH_LEN,
    HEADER_LEN, MAX_CONFIG_ENTRIES, MAX_INTS, MAX_KEY_LEN, MAX_NAME_LEN, MAX_RANK, MAX_STR_LEN,
    MAX_TENSORS,
};

use crate::atomic;
use crate::convert;
use crate::error::ModelFileError;

/// A tensor waiting to be written.
#[derive(Clone, Debug)]
struct Pending {
    dtype: DType,
    shape: Shape,
    bytes: Vec<u8>,
}

/// Builds a `.pupil` file: model info, architecture config and named tensors.
/// Tensors are stored in name order, each 64-byte aligned.
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    info: ModelInfo,
    tensors: BTreeMap<String, Pending>,
}

/// `value` as a bounded string, or a [`ModelFileError::BadLength`] naming `what`.
fn bounded<const N: usize>(
    what: &'static str,
    value: &str,
) -> Result<BoundedString<N>, ModelFileError> {
    BoundedString::try_from(value)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ModelFileError::BadLength {
            what,
            value: value.to_owned(),
            max: N,
        })
}

impl ModelBuilder {
    /// A builder for version 1 of model `model_id` with architecture `arch`
    /// (e.g. `mlp`), no parent, written by this pupil.
    pub fn new(model_id: &str, arch: &str) -> Result<Self, ModelFileError> {
        let info = ModelInfo {
            model_id: bounded("model id", model_id)?,
            arch: bounded("architecture name", arch)?,
            config: BoundedVec::new(),
            version: 1,
            parent: None,
            created_by: bounded("created-by", concat!("pupil ", env!("CARGO_PKG_VERSION")))?,
        };
        Ok(ModelBuilder {
            info,
            tensors: BTreeMap::new(),
        })
    }

    /// Sets the model version number.
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.info.version = version;
        self
    }

    /// Sets the content hash of the model this one was refined from.
    pub fn parent(&mut self, parent: Option<[u8; 32]>) -> &mut Self {
        self.info.parent = parent;
        self
    }

    /// Sets the name of the tool writing the file.
    pub fn created_by(&mut self, created_by: &str) -> Result<&mut Self, ModelFileError> {
        self.info.created_by = bounded("created-by", created_by)?;
        Ok(self)
    }

    /// Sets config `key` to `value`, replacing an earlier value of the key.
    pub fn config(&mut self, key: &str, value: ConfigValue) -> Result<&mut Self, ModelFileError> {
        let key: BoundedString<MAX_KEY_LEN> = bounded("config key", key)?;
        match self.info.config.iter_mut().find(|e| e.key == key) {
            Some(entry) => entry.value = value,
            None => self
                .info
                .config
                .push(ConfigEntry { key, value })
                .map_err(|_| ModelFileError::TooMany {
                    what: "config entries",
                    max: MAX_CONFIG_ENTRIES,
                    hint: "drop unused settings or combine some into integer lists",
                })?,
        }
        Ok(self)
    }

    /// Sets config `key` to an integer.
    pub fn config_int(&mut self, key: &str, value: i64) -> Result<&mut Self, ModelFileError> {
        self.config(key, ConfigValue::Int(value))
    }

    /// Sets config `key` to a float.
    pub fn config_float(&mut self, key: &str, value: f64) -> Result<&mut Self, ModelFileError> {
        self.config(key, ConfigValue::Float(value))
    }

    /// Sets config `key` to a string of 1 to [`MAX_STR_LEN`] bytes.
    pub fn config_str(&mut self, key: &str, value: &str) -> Result<&mut Self, ModelFileError> {
        let value = bounded::<MAX_STR_LEN>("config string", value)?;
        self.config(key, ConfigValue::Str(value))
    }

    /// Sets config `key` to a list of at most [`MAX_INTS`] integers.
    pub fn config_ints(&mut self, key: &str, values: &[i64]) -> Result<&mut Self, ModelFileError> {
        let values = BoundedVec::from_slice(values).map_err(|()| ModelFileError::TooMany {
            what: "integers in one config list",
            max: MAX_INTS,
            hint: "shorten the list or split it over several keys",
        })?;
        self.config(key, ConfigValue::Ints(values))
    }

    /// Adds tensor `name` with raw little-endian `bytes` of `dtype` and `shape`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, ModelFileError> {
        let bytes = bytes.into();
        let (shape, expected) = self.check(name, dtype, shape)?;
        if bytes.len() as u64 != expected {
            return Err(ModelFileError::DataLength {
                name: name.to_owned(),
                dtype,
                shape: shape.to_vec(),
                unit: "bytes",
                expected,
                got: bytes.len() as u64,
            });
        }
        let pending = Pending {
            dtype,
            shape,
            bytes,
        };
        self.tensors.insert(name.to_owned(), pending);
        Ok(self)
    }

    /// Adds tensor `name` of f32 `values`, stored as f32.
    pub fn add_f32(
        &mut self,
        name: &str,
        shape: &[u64],
        values: &[f32],
    ) -> Result<&mut Self, ModelFileError> {
        self.add_f32_as(name, DType::F32, shape, values)
    }

    /// Adds tensor `name` of f32 `values`, converted to `dtype`: F32, F16,
    /// BF16, or quantized to Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K.
    pub fn add_f32_as(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        values: &[f32],
    ) -> Result<&mut Self, ModelFileError> {
        let (checked, _) = self.check(name, dtype, shape)?;
        let elements = DType::elements(&checked).unwrap_or(u64::MAX);
        if values.len() as u64 != elements {
            return Err(ModelFileError::DataLength {
                name: name.to_owned(),
                dtype,
                shape: shape.to_vec(),
                unit: "values",
                expected: elements,
                got: values.len() as u64,
            });
        }
        let bytes = convert::from_f32(dtype, values).ok_or_else(|| {
            ModelFileError::UnsupportedConversion {
                name: name.to_owned(),
                dtype,
            }
        })?;
        self.add_tensor(name, dtype, shape, bytes)
    }

    /// Checks a new tensor's name, count, rank and shape; returns the shape
    /// and the tensor's byte size.
    fn check(
        &self,
        name: &str,
        dtype: DType,
        shape: &[u64],
    ) -> Result<(Shape, u64), ModelFileError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(ModelFileError::BadLength {
                what: "tensor name",
                value: name.to_owned(),
                max: MAX_NAME_LEN,
            });
        }
        if self.tensors.contains_key(name) {
            return Err(ModelFileError::DuplicateTensor {
                name: name.to_owned(),
            });
        }
        if self.tensors.len() >= MAX_TENSORS as usize {
            return Err(ModelFileError::TooMany {
                what: "tensors",
                max: MAX_TENSORS as usize,
                hint: "merge tensors or split the model into several files",
            });
        }
        let checked = Shape::from_slice(shape).map_err(|()| ModelFileError::TooMany {
            what: "dimensions in one shape",
            max: MAX_RANK,
            hint: "reshape the tensor to fewer dimensions",
        })?;
        let bytes = dtype
            .byte_len(shape)
            .map_err(|error| ModelFileError::BadShape {
                name: name.to_owned(),
                dtype,
                shape: shape.to_vec(),
                error,
            })?;
        Ok((checked, bytes))
    }

    /// Encodes the complete file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelFileError> {
        let mut data = Vec::new();
        let mut entries = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let offset = data.len().next_multiple_of(ALIGN as usize);
            data.resize(offset, 0);
            data.extend_from_slice(&t.bytes);
            entries.push(TensorEntry {
                name,
                dtype: t.dtype,
                shape: t.shape.clone(),
                offset: offset as u64,
                len: t.bytes.len() as u64,
            });
        }
        encode_file(&self.info, &entries, &data).map_err(ModelFileError::Encode)
    }

    /// Writes the file to `path` atomically (temporary file in the same
    /// directory, fsync, rename, directory fsync); returns its content hash.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<[u8; 32], ModelFileError> {
        let bytes = self.to_bytes()?;
        atomic::write_atomic(path.as_ref(), &bytes)?;
        Ok(bytes
            .get(HEADER_LEN..HEADER_LEN + HASH_LEN)
            .and_then(|h| h.try_into().ok())
            .unwrap_or_default())
    }
}
