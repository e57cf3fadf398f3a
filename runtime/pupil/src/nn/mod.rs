//! Building blocks, written forward-only over the tape: their gradients come from autodiff.
//! Each block declares its parameters in a [`ParamsBuilder`](crate::params::ParamsBuilder)
//! under a dotted name and keeps their ids.

mod linear;
mod mlp;

pub use linear::{Linear, Lora};
pub use mlp::Mlp;
