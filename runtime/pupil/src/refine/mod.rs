//! On-device refinement: a student gets better on data the device generates itself, without
//! forgetting what it knew.
//!
//! - [`select`]: local data generation from the model's own predictions (self-training with
//!   class-adaptive thresholds, active selection by entropy or margin, a curriculum);
//! - [`replay`]: anchor examples shipped in the model file, mixed into every batch;
//! - [`plan`]: the memory plan (micro-batch and gradient accumulation under a budget);
//! - [`checkpoint`]: atomic checkpoints for bit-for-bit resume;
//! - [`gate`]: the quality gate that keeps or rolls back a round;
//! - [`session`]: the round loop tying them together for classifiers;
//! - [`distill`]: training a student from a teacher's temperature-softened logits;
//! - [`distill_encoder`]: a shallower sentence encoder from a deeper one's embeddings;
//! - [`student_layers`]: which teacher layers such a student starts from;
//! - [`text`]: decoder personalisation (LoRA on local text, perplexity, self-sampled anchors);
//! - [`generate`]: generate-score-train, sampling and judging continuations of local prompts.

pub mod blend;
pub mod checkpoint;
pub mod distill;
pub mod distill_encoder;
pub mod gate;
pub mod generate;
pub mod plan;
pub mod replay;
pub mod select;
pub mod session;
pub mod student_layers;
pub mod text;

pub use session::{
    label_oracle, Active, Eval, History, Outcome, Progress, RefineConfig, RoundReport, Session,
    UpdateReport,
};
