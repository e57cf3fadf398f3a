//! Differential privacy for federated rounds (user level: one device's whole contribution
//! to a round is what is protected).
//!
//! The trust model is central DP: devices clip their own deltas to norm C (so what leaves a
//! device is bounded), the server clips again (it cannot trust that they did), sums, adds
//! Gaussian noise of standard deviation z·C once to the sum and divides by the expected
//! number of updates ([`gaussian`]). Noise added on every device instead (local DP) would
//! need about √n times the total noise for the same ε over n devices in a round, which
//! leaves nothing to learn at fleet sizes like pupil's; the price is trusting the server
//! with the clipped deltas. The [`rdp`] accountant turns the sampling rate, z and the
//! rounds run into ε at a chosen δ; it assumes each device takes part in a round
//! independently with probability q (Poisson sampling), which `pupil simulate --dp-noise`
//! does.

pub mod gaussian;
pub mod rdp;

pub use gaussian::{noised_mean, GaussianParams};
pub use rdp::{AccountError, RdpAccountant};
