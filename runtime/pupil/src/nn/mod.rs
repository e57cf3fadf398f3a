//! Building blocks, written forward-only over the tape: their gradients come from autodiff.
//! Each block declares its parameters in a [`ParamsBuilder`](crate::params::ParamsBuilder)
//! under a dotted name and keeps their ids.

mod attention;
mod conv;
mod embedding;
mod linear;
mod mlp;
mod norm;

pub use attention::{AttentionConfig, MultiHeadAttention};
pub use conv::Conv2d;
pub use embedding::Embedding;
pub use linear::{Linear, Lora};
pub use mlp::Mlp;
pub use norm::{LayerNorm, RmsNorm};
