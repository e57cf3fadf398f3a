//! Adding imported tensors to a model file in the dtype the user asked for.

use crate::format::{DType, ModelBuilder, TensorView};

use super::error::ImportError;

/// The dtype imported float tensors are stored as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Every float or quantized tensor dequantized to f32.
    F32,
    /// Float and quantized tensors of rank 2 and more as f16; vectors (norms, biases) as f32.
    F16,
    /// As stored: F32, F16, BF16 and the GGML block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
    /// Q4_K, Q5_K, Q6_K) carried over bit for bit.
    #[default]
    Keep,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Target::F32),
            "f16" => Ok(Target::F16),
            "keep" => Ok(Target::Keep),
            _ => Err(format!("unknown dtype {s:?}; use f32, f16 or keep")),
        }
    }
}

/// Adds tensor `name` of `dtype`, `shape` and raw `bytes` to `builder`, converted per `target`.
/// Integer tensors are always kept as they are.
pub(crate) fn put(
    builder: &mut ModelBuilder,
    target: Target,
    name: &str,
    dtype: DType,
    shape: &[u64],
    bytes: &[u8],
) -> Result<(), ImportError> {
    let float = !matches!(dtype, DType::I8 | DType::I32 | DType::U8);
    let want = match target {
        Target::Keep => dtype,
        _ if !float => dtype,
        Target::F16 if shape.len() >= 2 => DType::F16,
        Target::F16 | Target::F32 => DType::F32,
    };
    if want == dtype {
        builder.add_tensor(name, dtype, shape, bytes)?;
    } else {
        let view = TensorView {
            name,
            dtype,
            shape,
            bytes,
        };
        builder.add_f32_as(name, want, shape, &view.to_f32())?;
    }
    Ok(())
}
