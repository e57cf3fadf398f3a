//! The fixtures the browser tests compare with native results, and how both sides read them.
//!
//! - `fixtures/mnist-test-100.bin`: the first 100 MNIST test digits: 100 label bytes, then
//!   100 x 784 pixel bytes.
//! - `fixtures/student-native.bin`: what the native CPU backend computes for the shipped
//!   student on them, as little-endian f32: the logits of the 100 digits (`[100, 10]`), the
//!   loss of one training step on the first [`TRAIN`] digits (with [`train_labels`]), then every [`STRIDE`]-th
//!   parameter after that step. `tests/native.rs` checks it against native and rewrites it
//!   with `PUPIL_BLESS=1`.
#![allow(dead_code)] // each test binary uses its own part

/// Digits in the fixture.
pub const DIGITS: usize = 100;
/// Values per digit.
pub const PIXELS: usize = 784;
/// Classes of the student.
pub const CLASSES: usize = 10;
/// Digits in the training step's batch.
pub const TRAIN: usize = 32;
/// The training step's learning rate.
pub const LR: f32 = 1e-3;
/// Every how many parameters the native fixture keeps one.
pub const STRIDE: usize = 64;

/// The digits' labels and pixels (`byte / 255`) from the digits fixture.
pub fn digits(bytes: &[u8]) -> (Vec<u32>, Vec<f32>) {
    assert_eq!(bytes.len(), DIGITS * (1 + PIXELS), "digits fixture size");
    let (labels, pixels) = bytes.split_at(DIGITS);
    (
        labels.iter().map(|&y| u32::from(y)).collect(),
        pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
    )
}

/// What the native backend computed (see the module doc).
pub struct Native {
    /// Logits of the 100 digits.
    pub logits: Vec<f32>,
    /// Loss of the training step.
    pub loss: f32,
    /// Every [`STRIDE`]-th parameter after it.
    pub sampled: Vec<f32>,
}

impl Native {
    /// Parse the native fixture.
    pub fn parse(bytes: &[u8]) -> Native {
        let all: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (logits, rest) = all.split_at(DIGITS * CLASSES);
        Native {
            logits: logits.to_vec(),
            loss: rest[0],
            sampled: rest[1..].to_vec(),
        }
    }

    /// The fixture's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.logits
            .iter()
            .chain([&self.loss])
            .chain(&self.sampled)
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

/// The labels of the training step: for the first [`TRAIN`] digits, a class the student
/// disagrees with (the next one), as a user's corrections would be. Their gradients are
/// large, so AdamW's first step, which moves each weight by about `lr` times the sign of
/// its gradient, does not hinge on rounding in gradients within a few `eps` of zero (on the
/// student's own, nearly zero-loss labels, a few weights of 199 424 moved by 1.3e-4
/// differently on WebGPU and the CPU backend for that reason alone).
pub fn train_labels(labels: &[u32]) -> Vec<u32> {
    labels[..TRAIN]
        .iter()
        .map(|&y| (y + 1) % CLASSES as u32)
        .collect()
}

/// Every [`STRIDE`]-th value.
pub fn sample(values: &[f32]) -> Vec<f32> {
    values.iter().step_by(STRIDE).copied().collect()
}

/// The largest |a - b| (the lengths must agree).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
