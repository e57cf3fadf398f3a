//! Planning a refinement session's memory before it starts: weights, gradients and optimizer
//! state are fixed; activations grow with the micro-batch. The planner picks the largest
//! micro-batch that fits the budget and accumulates gradients over as many micro-batches as
//! the requested batch needs, or refuses with a message that says what to change.

use crate::error::{Error, Result};

/// What a session holds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeeds {
    /// Parameter values, frozen ones included.
    pub weights: u64,
    /// Gradient slots.
    pub grads: u64,
    /// Optimizer state (moments of the trainable parameters only).
    pub optimizer: u64,
    /// Activations and their gradients per example in a micro-batch (forward plus backward).
    pub per_example: u64,
    /// Everything else that does not grow with the batch (inputs staged, loss, clip state).
    pub fixed: u64,
}

impl MemoryNeeds {
    /// Bytes that do not depend on the micro-batch.
    pub fn base(&self) -> u64 {
        self.weights + self.grads + self.optimizer + self.fixed
    }

    /// Bytes for a micro-batch of `m` examples.
    pub fn at(&self, m: usize) -> u64 {
        self.base() + self.per_example * m as u64
    }
}

/// A session's memory plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Examples per optimizer step, as asked.
    pub batch: usize,
    /// Examples per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-batches whose gradients accumulate into one step.
    pub accumulation: usize,
    /// Bytes the plan expects at its peak.
    pub planned_bytes: u64,
    /// The budget it was planned against.
    pub budget: u64,
    /// The needs it was planned from.
    pub needs: MemoryNeeds,
}

/// Plan `batch` examples per step within `budget` bytes.
pub fn plan(needs: MemoryNeeds, batch: usize, budget: u64) -> Result<Plan> {
    let batch = batch.max(1);
    if needs.at(1) > budget {
        return Err(Error::OverBudget {
            needed: needs.at(1),
            budget,
            detail: format!(
                "weights {}, gradients {}, optimizer {}, other {}, one example's activations {}",
                mib(needs.weights),
                mib(needs.grads),
                mib(needs.optimizer),
                mib(needs.fixed),
                mib(needs.per_example)
            ),
            hint: "raise --memory-budget, train fewer parameters (--train head, or LoRA with a \
                   smaller rank), or use a shorter sequence"
                .into(),
        });
    }
    let fits = (budget - needs.base())
        .checked_div(needs.per_example)
        .map_or(batch, |n| n.min(batch as u64) as usize);
    // Equal micro-batches: the fewest passes, then the smallest micro-batch that covers them.
    let accumulation = batch.div_ceil(fits);
    let micro_batch = batch.div_ceil(accumulation);
    Ok(Plan {
        batch,
        micro_batch,
        accumulation,
        planned_bytes: needs.at(micro_batch),
        budget,
        needs,
    })
}

/// Parse a size such as `512MB`, `64MiB`, `2G` or `1000000` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("{text:?} is not a size: use e.g. 512MB or 2GB")))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::Invalid(format!(
                "unknown size unit {other:?} in {text:?}: use B, KB, MB or GB"
            )))
        }
    };
    Ok((value * scale) as u64)
}

/// `bytes` in KiB, MiB or GiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEEDS: MemoryNeeds = MemoryNeeds {
        weights: 1000,
        grads: 1000,
        optimizer: 400,
        per_example: 100,
        fixed: 100,
    };

    #[test]
    fn whole_batch_when_it_fits() {
        let p = plan(NEEDS, 16, 10_000).unwrap();
        assert_eq!((p.micro_batch, p.accumulation), (16, 1));
        assert_eq!(p.planned_bytes, 2500 + 1600);
    }

    #[test]
    fn accumulates_when_the_batch_does_not_fit() {
        // 2500 fixed; 1000 left -> 10 examples per pass; 32 -> 4 passes of 8.
        let p = plan(NEEDS, 32, 3500).unwrap();
        assert_eq!((p.micro_batch, p.accumulation), (8, 4));
        assert!(p.planned_bytes <= 3500);
        assert!(p.micro_batch * p.accumulation >= 32);
    }

    #[test]
    fn refuses_with_a_clear_message() {
        let e = plan(NEEDS, 8, 2550).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(
            e,
            Error::OverBudget {
                needed: 2600,
                budget: 2550,
                ..
            }
        ));
        assert!(msg.contains("raise --memory-budget"), "{msg}");
    }

    #[test]
    fn plans_never_exceed_the_budget() {
        for budget in 2600..4000 {
            for batch in 1..40 {
                let p = plan(NEEDS, batch, budget).unwrap();
                assert!(p.planned_bytes <= budget, "{batch} {budget}");
                assert!(p.micro_batch * p.accumulation >= batch);
                assert!(p.micro_batch * (p.accumulation - 1) < batch);
            }
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
