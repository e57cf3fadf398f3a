//! Aggregating LoRA adapters from many devices. An adapter contributes `B A` (`[out, r]`
//! times `[r, in]`) to its projection, so what a federation should average is the products:
//! `M = sum_i w_i B_i A_i / sum_i w_i`. Averaging the factors separately gives
//! `mean(B) mean(A)`, which is not `M` (the cross terms `B_i A_j` of different devices
//! enter, and two devices that learned the same update in different bases cancel out).
//!
//! [`Merge::Product`] computes `M` exactly and re-factors it to rank `r` by truncated SVD,
//! which is the best rank-`r` approximation of `M` (Eckart-Young): the stacked factors
//! `M = [w_1 B_1 .. w_n B_n] [A_1; ..; A_n]` are reduced by two QR factorizations to a small
//! `nr x nr` core whose SVD (one-sided Jacobi) gives `M`'s singular vectors, without ever
//! forming an `[out, in]` matrix's SVD. The new factors split each singular value evenly:
//! `B' = U sqrt(S)`, `A' = sqrt(S) V^T`. [`Merge::Factors`] is the naive rule, kept to
//! measure against.

use pupil_format::ModelFile;

use crate::aggregate::DeltaSource;

/// How to merge adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Average `B A` and re-factor to rank `r` by truncated SVD.
    Product,
    /// Average A and B separately (biased; for comparison).
    Factors,
}

/// One device's adapter for one projection: `b` is `[out, rank]`, `a` is `[rank, in]`,
/// row-major, with its aggregation weight.
#[derive(Clone, Debug)]
pub struct Factors<'a> {
    /// `[out, rank]`.
    pub b: &'a [f32],
    /// `[rank, in]`.
    pub a: &'a [f32],
    /// Weight (e.g. examples trained on); must be finite and not negative.
    pub weight: f64,
}

/// Merged factors `(b [out, rank], a [rank, in])` of `adapters` (all of shape
/// `[out, rank]` / `[rank, in]`) by `rule`. Errors on a shape mismatch, no adapters, or
/// weights that do not sum to a positive finite number.
pub fn merge(
    adapters: &[Factors],
    out: usize,
    rank: usize,
    inp: usize,
    rule: Merge,
) -> Result<(Vec<f32>, Vec<f32>), String> {
    if adapters.is_empty() || rank == 0 {
        return Err("no adapters to merge (or rank 0)".into());
    }
    for f in adapters {
        if f.b.len() != out * rank || f.a.len() != rank * inp {
            return Err(format!(
                "adapter factors of {} and {} values, expected [{out}, {rank}] and [{rank}, {inp}]",
                f.b.len(),
                f.a.len()
            ));
        }
        if !(f.weight.is_finite() && f.weight >= 0.0) {
            return Err(format!(
                "adapter weight {} is not a finite number >= 0",
                f.weight
            ));
        }
    }
    let total: f64 = adapters.iter().map(|f| f.weight).sum();
    if !(total.is_finite() && total > 0.0) {
        return Err("adapter weights sum to zero".into());
    }
    match rule {
        Merge::Factors => {
            let mean = |pick: &dyn Fn(&Factors) -> Vec<f64>, n: usize| {
                let mut m = vec![0.0f64; n];
                for f in adapters {
                    for (m, v) in m.iter_mut().zip(pick(f)) {
                        *m += f.weight / total * v;
                    }
                }
                m.into_iter().map(|v| v as f32).collect::<Vec<f32>>()
            };
            let widen = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
            Ok((
                mean(&|f| widen(f.b), out * rank),
                mean(&|f| widen(f.a), rank * inp),
            ))
        }
        Merge::Product => Ok(product(adapters, out, rank, inp, total)),
    }
}

/// In a round's aggregate `mean` (the weighted mean of `deltas`, each laid out as
/// `layout`: tensor name, offset, length), replaces the entries of every LoRA pair of
/// `model` (`X.lora_a` `[r, in]` beside `X.lora_b` `[out, r]`) by the [`Merge::Product`]
/// of the devices' refined factors (the model's plus each device's delta), as a delta from
/// the model's. Returns how many pairs it merged.
pub fn merge_adapter_deltas<S: DeltaSource>(
    model: &ModelFile,
    layout: &[(&str, usize, usize)],
    deltas: &[S],
    weights: &[f64],
    mean: &mut [f32],
) -> Result<usize, String> {
    let at = |name: &str| layout.iter().find(|l| l.0 == name).map(|l| (l.1, l.2));
    let mut merged = 0;
    for &(name, a_at, a_len) in layout {
        let Some(stem) = name.strip_suffix(".lora_a") else {
            continue;
        };
        let b_name = format!("{stem}.lora_b");
        let (Some((b_at, b_len)), Ok(a_t), Ok(b_t)) =
            (at(&b_name), model.tensor(name), model.tensor(&b_name))
        else {
            continue;
        };
        let (&[rank, inp], &[out, rank_b]) = (a_t.shape, b_t.shape) else {
            continue;
        };
        let (rank, inp, out) = (rank as usize, inp as usize, out as usize);
        if rank_b as usize != rank || a_len != rank * inp || b_len != out * rank {
            return Err(format!("{stem}: LoRA factors of mismatched shapes"));
        }
        let (a0, b0) = (a_t.to_f32(), b_t.to_f32());
        let refined: Vec<(Vec<f32>, Vec<f32>)> = deltas
            .iter()
            .map(|d| {
                let add = |base: &[f32], from: usize| -> Vec<f32> {
                    let mut refined = vec![0.0; base.len()];
                    d.read(from, &mut refined);
                    refined.iter_mut().zip(base).for_each(|(r, x)| *r += x);
                    refined
                };
                (add(&b0, b_at), add(&a0, a_at))
            })
            .collect();
        let factors: Vec<Factors> = refined
            .iter()
            .zip(weights)
            .map(|((b, a), &weight)| Factors { b, a, weight })
            .collect();
        let (b, a) = merge(&factors, out, rank, inp, Merge::Product)?;
        for (m, (new, old)) in mean[b_at..b_at + b_len].iter_mut().zip(b.iter().zip(&b0)) {
            *m = new - old;
        }
        for (m, (new, old)) in mean[a_at..a_at + a_len].iter_mut().zip(a.iter().zip(&a0)) {
            *m = new - old;
        }
        merged += 1;
    }
    Ok(merged)
}

/// `(b, a)` of rank `rank` closest to the weighted mean of the products.
fn product(
    adapters: &[Factors],
    out: usize,
    rank: usize,
    inp: usize,
    total: f64,
) -> (Vec<f32>, Vec<f32>) {
    let k = adapters.len() * rank;
    // Stacked columns: bs [out, k] (weights folded in), as_t [in, k] (A_i transposed).
    let mut bs = vec![0.0f64; out * k];
    let mut as_t = vec![0.0f64; inp * k];
    for (d, f) in adapters.iter().enumerate() {
        let w = f.weight / total;
        for j in 0..rank {
            let col = d * rank + j;
            for o in 0..out {
                bs[o * k + col] = w * f64::from(f.b[o * rank + j]);
            }
            for i in 0..inp {
                as_t[i * k + col] = f64::from(f.a[j * inp + i]);
            }
        }
    }
    let (qb, rb) = qr(&bs, out, k);
    let (qa, ra) = qr(&as_t, inp, k);
    // Core C = Rb Ra^T (k x k): M = Qb C Qa^T.
    let mut c = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            c[i * k + j] = (0..k).map(|t| rb[i * k + t] * ra[j * k + t]).sum();
        }
    }
    let (u, s, v) = svd(&c, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
    let mut b = vec![0.0f32; out * rank];
    let mut a = vec![0.0f32; rank * inp];
    for (j, &col) in order.iter().take(rank).enumerate() {
        let root = s[col].sqrt();
        for o in 0..out {
            let x: f64 = (0..k).map(|t| qb[o * k + t] * u[t * k + col]).sum();
            b[o * rank + j] = (x * root) as f32;
        }
        for i in 0..inp {
            let x: f64 = (0..k).map(|t| qa[i * k + t] * v[t * k + col]).sum();
            a[j * inp + i] = (x * root) as f32;
        }
    }
    (b, a)
}

/// Thin QR of the `rows x cols` matrix `m` (row-major) by modified Gram-Schmidt, run twice
/// for orthogonality; columns that are (numerically) dependent get a zero column in Q and a
/// zero row in R. Returns `(q [rows, cols], r [cols, cols])` with `m = q r`.
fn qr(m: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut q = m.to_vec();
    let mut r = vec![0.0f64; cols * cols];
    let scale = m
        .iter()
        .fold(0.0f64, |acc, v| acc.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    for j in 0..cols {
        for _pass in 0..2 {
            for p in 0..j {
                let dot: f64 = (0..rows).map(|i| q[i * cols + p] * q[i * cols + j]).sum();
                r[p * cols + j] += dot;
                for i in 0..rows {
                    q[i * cols + j] -= dot * q[i * cols + p];
                }
            }
        }
        let norm = (0..rows)
            .map(|i| q[i * cols + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if norm <= 1e-12 * scale * (rows as f64).sqrt() {
            for i in 0..rows {
                q[i * cols + j] = 0.0;
            }
            r[j * cols + j] = 0.0;
        } else {
            r[j * cols + j] = norm;
            for i in 0..rows {
                q[i * cols + j] /= norm;
            }
        }
    }
    (q, r)
}

/// SVD of the square `k x k` matrix `c` by one-sided Jacobi: `c = u diag(s) v^T`, `u` and
/// `v` row-major `k x k` (columns are the singular vectors; `u`'s column is zero where
/// `s` is zero), `s` not sorted.
fn svd(c: &[f64], k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut w = c.to_vec();
    let mut v = vec![0.0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..k {
                    let (x, y) = (w[i * k + p], w[i * k + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let sign = if zeta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let cs = 1.0 / (1.0 + t * t).sqrt();
                let sn = cs * t;
                for m in [&mut w, &mut v] {
                    for i in 0..k {
                        let (x, y) = (m[i * k + p], m[i * k + q]);
                        m[i * k + p] = cs * x - sn * y;
                        m[i * k + q] = sn * x + cs * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s = vec![0.0f64; k];
    let mut u = vec![0.0f64; k * k];
    for j in 0..k {
        s[j] = (0..k).map(|i| w[i * k + j].powi(2)).sum::<f64>().sqrt();
        if s[j] > 0.0 {
            for i in 0..k {
                u[i * k + j] = w[i * k + j] / s[j];
            }
        }
    }
    (u, s, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// `b a` as `[out, in]`.
    fn product_of(b: &[f32], a: &[f32], out: usize, rank: usize, inp: usize) -> Vec<f64> {
        let mut m = vec![0.0f64; out * inp];
        for o in 0..out {
            for i in 0..inp {
                m[o * inp + i] = (0..rank)
                    .map(|j| f64::from(b[o * rank + j]) * f64::from(a[j * inp + i]))
                    .sum();
            }
        }
        m
    }

    fn frobenius(x: &[f64], y: &[f64]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// The weighted mean of the devices' products.
    fn target(devs: &[(Vec<f32>, Vec<f32>, f64)], out: usize, rank: usize, inp: usize) -> Vec<f64> {
        let total: f64 = devs.iter().map(|d| d.2).sum();
        let mut m = vec![0.0f64; out * inp];
        for (b, a, w) in devs {
            for (m, p) in m.iter_mut().zip(product_of(b, a, out, rank, inp)) {
                *m += w / total * p;
            }
        }
        m
    }

    fn merged_error(
        devs: &[(Vec<f32>, Vec<f32>, f64)],
        (out, rank, inp): (usize, usize, usize),
        rule: Merge,
    ) -> f64 {
        let f: Vec<Factors> = devs
            .iter()
            .map(|(b, a, w)| Factors { b, a, weight: *w })
            .collect();
        let (b, a) = merge(&f, out, rank, inp, rule).unwrap();
        frobenius(
            &product_of(&b, &a, out, rank, inp),
            &target(devs, out, rank, inp),
        )
    }

    #[test]
    fn product_rule_is_exact_when_the_mean_has_the_rank() {
        let (out, rank, inp) = (12, 3, 9);
        // One device: the merge returns the same product.
        let one = vec![(random(out * rank, 1), random(rank * inp, 2), 5.0)];
        assert!(merged_error(&one, (out, rank, inp), Merge::Product) < 1e-5);
        // Devices sharing A (frozen A, only B trained): the mean of products has rank r.
        let a = random(rank * inp, 3);
        let shared: Vec<_> = (0..5)
            .map(|d| (random(out * rank, 10 + d), a.clone(), 1.0 + d as f64))
            .collect();
        assert!(merged_error(&shared, (out, rank, inp), Merge::Product) < 1e-5);
        assert!(merged_error(&shared, (out, rank, inp), Merge::Factors) < 1e-5);
        // B = 0 everywhere (fresh adapters): the merge is zero, not NaN.
        let zero = vec![(vec![0.0; out * rank], random(rank * inp, 4), 1.0); 3];
        assert!(merged_error(&zero, (out, rank, inp), Merge::Product) < 1e-12);
    }

    #[test]
    fn product_rule_beats_factor_averaging() {
        let (out, rank, inp) = (40, 4, 32);
        let devs: Vec<_> = (0..8)
            .map(|d| {
                (
                    random(out * rank, 100 + d),
                    random(rank * inp, 200 + d),
                    1.0,
                )
            })
            .collect();
        let product = merged_error(&devs, (out, rank, inp), Merge::Product);
        let factors = merged_error(&devs, (out, rank, inp), Merge::Factors);
        assert!(product < factors, "product {product}, factors {factors}");
        // Eckart-Young: no rank-r factorization is closer than the truncated SVD; a
        // slightly perturbed one is farther.
        let f: Vec<Factors> = devs
            .iter()
            .map(|(b, a, w)| Factors { b, a, weight: *w })
            .collect();
        let (mut b, a) = merge(&f, out, rank, inp, Merge::Product).unwrap();
        b[0] += 0.01;
        let nudged = frobenius(
            &product_of(&b, &a, out, rank, inp),
            &target(&devs, out, rank, inp),
        );
        assert!(nudged > product);
    }

    #[test]
    fn the_same_update_in_different_bases_survives_only_the_product_rule() {
        // Every device learned B A, each in its own basis: B D_i and D_i^-1 A, D_i a
        // diagonal of scales in [0.5, 2] with random signs.
        let (out, rank, inp) = (16, 4, 10);
        let (b, a) = (random(out * rank, 7), random(rank * inp, 8));
        let devs: Vec<_> = (0..8)
            .map(|d| {
                let scales: Vec<f32> = random(rank, 300 + d)
                    .iter()
                    .map(|&r| (if r < 0.0 { -1.0 } else { 1.0 }) * (0.5 + 3.0 * r.abs()))
                    .collect();
                let bd: Vec<f32> = (0..out * rank).map(|i| b[i] * scales[i % rank]).collect();
                let ad: Vec<f32> = (0..rank * inp).map(|i| a[i] / scales[i / inp]).collect();
                (bd, ad, 1.0)
            })
            .collect();
        let norm = frobenius(&product_of(&b, &a, out, rank, inp), &vec![0.0; out * inp]);
        let product = merged_error(&devs, (out, rank, inp), Merge::Product);
        let factors = merged_error(&devs, (out, rank, inp), Merge::Factors);
        assert!(product < 1e-5 * norm, "product rule error {product}");
        assert!(
            factors > 0.3 * norm,
            "factor averaging error {factors} of {norm}"
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let b = vec![0.0; 6];
        let a = vec![0.0; 6];
        let ok = Factors {
            b: &b,
            a: &a,
            weight: 1.0,
        };
        assert!(merge(&[], 3, 2, 3, Merge::Product).is_err());
        assert!(merge(std::slice::from_ref(&ok), 3, 2, 4, Merge::Product).is_err());
        let nan = Factors {
            weight: f64::NAN,
            ..ok.clone()
        };
        assert!(merge(&[nan], 3, 2, 3, Merge::Product).is_err());
        let zero = Factors { weight: 0.0, ..ok };
        assert!(merge(&[zero], 3, 2, 3, Merge::Factors).is_err());
    }
}
