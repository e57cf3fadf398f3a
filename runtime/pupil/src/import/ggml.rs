//! ggml tensor element types: block sizes (to validate GGUF tensor extents) and the mapping
//! to `.pupil` dtypes. Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 blocks and Q4_K, Q5_K, Q6_K super-blocks
//! have the same byte layout in both formats, so they are carried over bit for bit.

use crate::format::DType;

/// A ggml element type by its GGUF code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(pub u32);

/// Per known code: name, elements per block, bytes per block.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (30, "BF16", 1, 2),
];

/// The types [`GgmlType::pupil_dtype`] maps, for error messages.
pub const SUPPORTED: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, I8, I32";

impl GgmlType {
    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        TYPES.iter().find(|t| t.0 == self.0)
    }

    /// The type's name, e.g. `Q4_1`, or `type <code>` for an unknown code.
    pub fn name(self) -> String {
        self.entry()
            .map_or_else(|| format!("type {}", self.0), |t| t.1.to_owned())
    }

    /// Bytes of `elements` values, `None` for an unknown type, a count that is not a whole
    /// number of blocks, or an overflow.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let &(_, _, block, bytes) = self.entry()?;
        elements.is_multiple_of(block).then_some(())?;
        (elements / block).checked_mul(bytes)
    }

    /// The `.pupil` dtype with the same byte layout, if there is one.
    pub fn pupil_dtype(self) -> Option<DType> {
        Some(match self.0 {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            12 => DType::Q4_K,
            13 => DType::Q5_K,
            14 => DType::Q6_K,
            24 => DType::I8,
            26 => DType::I32,
            30 => DType::BF16,
            _ => return None,
        })
    }
}
