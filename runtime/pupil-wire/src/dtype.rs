//! Tensor element types, including block-quantized formats.

use core::fmt;

use serde::{Serialize, Serializer};

/// Elements per block of the 32-element block dtypes (`Q8_0` .. `Q5_1`).
pub const QK: u64 = 32;
/// Elements per super-block of the k-quant dtypes (`Q4_K`, `Q5_K`, `Q6_K`).
pub const QK_K: u64 = 256;

/// The element type of a tensor.
///
/// Block formats hold [`QK`] elements per block, little-endian:
/// `Q8_0` = f16 scale + 32 × i8 (34 bytes); `Q4_0` = f16 scale + 16 bytes of
/// nibbles (18 bytes); `Q4_1` = f16 scale + f16 min + 16 bytes of nibbles (20 bytes);
/// `Q5_0` = f16 scale + 4 bytes of fifth bits + 16 bytes of nibbles (22 bytes); `Q5_1` = f16
/// scale + f16 min + fifth bits + nibbles (24 bytes). The k-quants hold [`QK_K`] elements
/// per super-block in GGML's layout: `Q4_K` (144 bytes) and `Q5_K` (176 bytes) have an f16
/// scale and minimum and eight 6-bit sub-scales and sub-minima; `Q6_K` (210 bytes) has 6-bit
/// quants, sixteen i8 sub-scales and a trailing f16 scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // GGML's names
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// bfloat16.
    BF16,
    /// Signed byte.
    I8,
    /// 32-bit signed integer.
    I32,
    /// Unsigned byte.
    U8,
    /// 8-bit blocks with one f16 scale per 32 elements.
    Q8_0,
    /// 4-bit blocks with one f16 scale per 32 elements.
    Q4_0,
    /// 4-bit blocks with an f16 scale and an f16 minimum per 32 elements.
    Q4_1,
    /// 5-bit blocks with one f16 scale per 32 elements.
    Q5_0,
    /// 5-bit blocks with an f16 scale and an f16 minimum per 32 elements.
    Q5_1,
    /// 4-bit k-quant super-blocks of 256 elements.
    Q4_K,
    /// 5-bit k-quant super-blocks of 256 elements.
    Q5_K,
    /// 6-bit k-quant super-blocks of 256 elements.
    Q6_K,
}

/// Why a shape cannot hold a tensor of some dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// The element count or byte size does not fit in 64 bits.
    Overflow,
    /// A block dtype needs an element count that is a multiple of its block.
    NotBlockMultiple {
        /// The element count of the shape.
        elements: u64,
        /// Elements per block of the dtype.
        block: u64,
    },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overflow => f.write_str("the shape's size overflows 64 bits"),
            Self::NotBlockMultiple { elements, block } => write!(
                f,
                "{elements} elements is not a multiple of the {block}-element quantization block"
            ),
        }
    }
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 14] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::I8,
        Self::I32,
        Self::U8,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The code stored in the tensor table.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The dtype stored under `code`, if any.
    pub fn from_code(code: u32) -> Option<DType> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// The lower-case name, e.g. `q4_0`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::I8 => "i8",
            Self::I32 => "i32",
            Self::U8 => "u8",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q4_K => "q4_k",
            Self::Q5_K => "q5_k",
            Self::Q6_K => "q6_k",
        }
    }

    /// The dtype with the lower-case `name`, if any.
    pub fn from_name(name: &str) -> Option<DType> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Elements per block: [`QK`] or [`QK_K`] for quantized dtypes, 1 otherwise.
    pub const fn block_elems(self) -> u64 {
        match self {
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => QK,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
            _ => 1,
        }
    }

    /// Whether this is a block-quantized dtype.
    pub const fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes per block (per element for non-block dtypes).
    pub const fn block_bytes(self) -> u64 {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::I8 | Self::U8 => 1,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// The number of elements of `shape` (1 for a scalar), without overflow.
    pub fn elements(shape: &[u64]) -> Result<u64, ShapeError> {
        shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or(ShapeError::Overflow)
    }

    /// The byte size of a tensor of this dtype and `shape`, without overflow.
    pub fn byte_len(self, shape: &[u64]) -> Result<u64, ShapeError> {
        let elements = Self::elements(shape)?;
        if elements % self.block_elems() != 0 {
            return Err(ShapeError::NotBlockMultiple {
                elements,
                block: self.block_elems(),
            });
        }
        (elements / self.block_elems())
            .checked_mul(self.block_bytes())
            .ok_or(ShapeError::Overflow)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl Serialize for DType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.code())
    }
}
