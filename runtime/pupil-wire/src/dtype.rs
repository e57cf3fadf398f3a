//! Tensor element types, including block-quantized formats.

use core::fmt;

use serde::{Serialize, Serializer};

/// Elements per block of the block-quantized dtypes.
pub const QK: u64 = 32;

/// The element type of a tensor.
///
/// Block formats hold [`QK`] elements per block, little-endian:
/// `Q8_0` = f16 scale + 32 × i8 (34 bytes); `Q4_0` = f16 scale + 16 bytes of
/// nibbles (18 bytes); `Q4_1` = f16 scale + f16 min + 16 bytes of nibbles (20 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

/// Why a shape cannot hold a tensor of some dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// The element count or byte size does not fit in 64 bits.
    Overflow,
    /// A block dtype needs an element count that is a multiple of [`QK`].
    NotBlockMultiple {
        /// The element count of the shape.
        elements: u64,
    },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overflow => f.write_str("the shape's size overflows 64 bits"),
            Self::NotBlockMultiple { elements } => write!(
                f,
                "{elements} elements is not a multiple of the {QK}-element quantization block"
            ),
        }
    }
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 9] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::I8,
        Self::I32,
        Self::U8,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
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
        }
    }

    /// The dtype with the lower-case `name`, if any.
    pub fn from_name(name: &str) -> Option<DType> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Elements per block: [`QK`] for quantized dtypes, 1 otherwise.
    pub const fn block_elems(self) -> u64 {
        match self {
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => QK,
            _ => 1,
        }
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
            return Err(ShapeError::NotBlockMultiple { elements });
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
