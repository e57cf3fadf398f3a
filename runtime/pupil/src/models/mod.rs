//! Architectures, each written once as a forward pass over the tape.

pub mod bert;
pub mod classifier;
pub mod llama;
pub mod text_classifier;
pub mod tokenizer;
