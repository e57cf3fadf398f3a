//! Scaled dot-product attention with grouped-query heads, a causal mask that works with a KV
//! cache, and a key padding mask.
//!
//! Shape key: q `[B, H, Tq, Dh]`, k and v `[B, Hkv, Tk, Dh]` with `g = H / Hkv` an integer
//! (query head h uses kv head `h / g`), padding mask `[B, Tk]` (1 keep, 0 masked), output
//! `[B, H, Tq, Dh]`. Causal: query i sees key j when `j <= i + (Tk - Tq)`.
//!   `S = scale q k^T` (scale `1/sqrt(Dh)` by default), `P = softmax(S)` over visible keys
//!   (0 on hidden keys; a query that sees no key gets P = 0, hence output 0), `O = P v`.
//! Backward (dO given; P saved from the forward):
//!   `dv = P^T dO`, `dP = dO v^T`, `dS = scale P (dP - rowsum(dP P))`, `dq = dS k`,
//!   `dk = dS^T q`; dk and dv sum over the g query heads that share a kv head.
//! The GPU path composes the batched matmul with the kernels of `attention.wgsl` (kv head
//! expansion for GQA, masked softmax, softmax backward); the CPU reference is plain loops.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::matmul::matmul_t;
use super::{common_backend, grid, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::{Gpu, Kernel};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    tq: u32,
    heads: u32,
    causal: u32,
    group: u32,
    inner: u32,
    scale: f32,
}

/// Resolved sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    dh: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.h / self.hkv
    }
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let bad = |why: &str| {
        Error::shape(
            "attention",
            format!(
                "q {:?}, k {:?}, v {:?}: {why}",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        )
    };
    let (&[b, h, tq, dh], &[kb, hkv, tk, kdh]) = (q.shape(), k.shape()) else {
        return Err(bad("need q [B, H, Tq, Dh] and k, v [B, Hkv, Tk, Dh]"));
    };
    if v.shape() != k.shape() {
        return Err(bad("k and v must have the same shape"));
    }
    if kb != b || kdh != dh {
        return Err(bad("batch and head size must agree"));
    }
    if dh == 0 || hkv == 0 || h % hkv != 0 {
        return Err(bad(
            "need Dh > 0 and H a multiple of Hkv > 0 (grouped-query heads)",
        ));
    }
    let d = Dims {
        b,
        h,
        hkv,
        tq,
        tk,
        dh,
    };
    // Kernels index scores [B, H, Tq, Tk] and expanded [B, H, Tk, Dh] tensors in u32.
    let rows = b * h * tq.max(tk);
    u32_len("attention", rows.saturating_mul(tk.max(dh)))?;
    Ok(d)
}

fn check_mask(mask: Option<&Tensor>, d: Dims) -> Result<()> {
    match mask {
        Some(m) if m.shape() != [d.b, d.tk] => Err(Error::shape(
            "attention",
            format!(
                "padding mask must be [B, Tk] = [{}, {}], got {:?}",
                d.b,
                d.tk,
                m.shape()
            ),
        )),
        _ => Ok(()),
    }
}

/// The default score scale `1 / sqrt(Dh)`.
pub fn default_scale(dh: usize) -> f32 {
    (1.0 / (dh as f64).sqrt()) as f32
}

/// Attention output `[B, H, Tq, Dh]` and the probabilities `P` `[B, H, Tq, Tk]` (keep them
/// for [`attention_backward`]), with an explicit score `scale`.
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let mut all = vec![q, k, v];
    all.extend(mask);
    let backend = common_backend("attention", &all)?;
    require_f32("attention", &all)?;
    let d = dims(q, k, v)?;
    check_mask(mask, d)?;
    match &backend {
        Backend::Cpu => {
            let out = Tensor::uninit(&backend, q.shape(), DType::F32)?;
            let probs = Tensor::uninit(&backend, &[d.b, d.h, d.tq, d.tk], DType::F32)?;
            let m = mask.map(|m| m.cpu_read()).transpose()?;
            cpu::forward(
                &q.cpu_read()?,
                &k.cpu_read()?,
                &v.cpu_read()?,
                m.as_deref(),
                d,
                causal,
                scale,
                &mut out.cpu_write()?,
                &mut probs.cpu_write()?,
            );
            Ok((out, probs))
        }
        Backend::Gpu(gpu) => {
            let (ke, ve) = (expand_kv(gpu, k, d)?, expand_kv(gpu, v, d)?);
            let scores = matmul_t(q, &ke, false, true)?;
            let probs = Tensor::uninit(&backend, scores.shape(), DType::F32)?;
            let params = Params {
                n: (d.b * d.h * d.tq) as u32,
                cols: d.tk as u32,
                tq: d.tq as u32,
                heads: d.h as u32,
                causal: causal as u32,
                group: d.group() as u32,
                inner: 0,
                scale,
            };
            let (entry, mut bindings) = match mask {
                Some(m) => ("softmax_fwd_masked", vec![m.bind(4)?]),
                None => ("softmax_fwd", vec![]),
            };
            bindings.extend([scores.bind(1)?, probs.bind(3)?]);
            gpu.dispatch(
                Kernel::f32("attention", entry),
                bytemuck::bytes_of(&params),
                &bindings,
                groups_for(d.b * d.h * d.tq),
            )?;
            let out = matmul_t(&probs, &ve, false, false)?;
            Ok((out, probs))
        }
    }
}

/// `softmax(q k^T / sqrt(Dh)) v` with optional causal and padding masks (see the module
/// documentation for shapes); output `[B, H, Tq, Dh]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
) -> Result<Tensor> {
    let scale = default_scale(q.shape().last().copied().unwrap_or(1));
    Ok(attention_forward(q, k, v, mask, causal, scale)?.0)
}

/// Gradients `(dq, dk, dv)` of attention given the forward's inputs, its probabilities
/// `probs` (from [`attention_forward`], which already encode both masks), its `scale` and
/// the output gradient `dy` (`[B, H, Tq, Dh]`).
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    dy: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let all = [q, k, v, probs, dy];
    let backend = common_backend("attention", &all)?;
    require_f32("attention", &all)?;
    let d = dims(q, k, v)?;
    if probs.shape() != [d.b, d.h, d.tq, d.tk] || dy.shape() != q.shape() {
        return Err(Error::shape(
            "attention backward",
            format!(
                "q {:?} and k {:?} need probs [{}, {}, {}, {}] and dy like q, got {:?} and {:?}",
                q.shape(),
                k.shape(),
                d.b,
                d.h,
                d.tq,
                d.tk,
                probs.shape(),
                dy.shape()
            ),
        ));
    }
    match &backend {
        Backend::Cpu => {
            let dq = Tensor::uninit(&backend, q.shape(), DType::F32)?;
            let dk = Tensor::uninit(&backend, k.shape(), DType::F32)?;
            let dv = Tensor::uninit(&backend, v.shape(), DType::F32)?;
            cpu::backward(
                &q.cpu_read()?,
                &k.cpu_read()?,
                &v.cpu_read()?,
                &probs.cpu_read()?,
                &dy.cpu_read()?,
                d,
                scale,
                [
                    &mut dq.cpu_write()?,
                    &mut dk.cpu_write()?,
                    &mut dv.cpu_write()?,
                ],
            );
            Ok((dq, dk, dv))
        }
        Backend::Gpu(gpu) => {
            let (ke, ve) = (expand_kv(gpu, k, d)?, expand_kv(gpu, v, d)?);
            let dv = reduce_kv(gpu, &matmul_t(probs, dy, true, false)?, d)?;
            let dp = matmul_t(dy, &ve, false, true)?;
            let ds = Tensor::uninit(&backend, dp.shape(), DType::F32)?;
            let params = Params {
                n: (d.b * d.h * d.tq) as u32,
                cols: d.tk as u32,
                tq: d.tq as u32,
                heads: d.h as u32,
                causal: 0,
                group: d.group() as u32,
                inner: 0,
                scale,
            };
            gpu.dispatch(
                Kernel::f32("attention", "softmax_bwd"),
                bytemuck::bytes_of(&params),
                &[probs.bind(1)?, dp.bind(2)?, ds.bind(3)?],
                groups_for(d.b * d.h * d.tq),
            )?;
            let dq = matmul_t(&ds, &ke, false, false)?;
            let dk = reduce_kv(gpu, &matmul_t(&ds, q, true, false)?, d)?;
            Ok((dq, dk, dv))
        }
    }
}

/// `[B, Hkv, Tk, Dh] -> [B, H, Tk, Dh]`, each kv head repeated for its g query heads (the
/// input itself when g = 1).
fn expand_kv(gpu: &Arc<Gpu>, x: &Tensor, d: Dims) -> Result<Tensor> {
    if d.group() == 1 {
        return Ok(x.clone());
    }
    let out = Tensor::uninit(
        &Backend::Gpu(gpu.clone()),
        &[d.b, d.h, d.tk, d.dh],
        DType::F32,
    )?;
    let params = Params {
        n: out.numel() as u32,
        cols: 0,
        tq: 0,
        heads: d.h as u32,
        causal: 0,
        group: d.group() as u32,
        inner: (d.tk * d.dh) as u32,
        scale: 1.0,
    };
    gpu.dispatch(
        Kernel::f32("attention", "expand_kv"),
        bytemuck::bytes_of(&params),
        &[x.bind(1)?, out.bind(3)?],
        grid(out.numel(), 256),
    )?;
    Ok(out)
}

/// `[B, H, Tk, Dh] -> [B, Hkv, Tk, Dh]`, summing each kv head's g query heads (the
/// transpose of [`expand_kv`]).
fn reduce_kv(gpu: &Arc<Gpu>, x: &Tensor, d: Dims) -> Result<Tensor> {
    if d.group() == 1 {
        return Ok(x.clone());
    }
    let out = Tensor::uninit(
        &Backend::Gpu(gpu.clone()),
        &[d.b, d.hkv, d.tk, d.dh],
        DType::F32,
    )?;
    let params = Params {
        n: out.numel() as u32,
        cols: 0,
        tq: 0,
        heads: d.hkv as u32,
        causal: 0,
        group: d.group() as u32,
        inner: (d.tk * d.dh) as u32,
        scale: 1.0,
    };
    gpu.dispatch(
        Kernel::f32("attention", "reduce_kv"),
        bytemuck::bytes_of(&params),
        &[x.bind(1)?, out.bind(3)?],
        grid(out.numel(), 256),
    )?;
    Ok(out)
}

/// The CPU reference: plain loops in f64.
pub(crate) mod cpu {
    use super::super::parallel::for_each_item;
    use super::Dims;

    fn visible(d: Dims, mask: Option<&[f32]>, causal: bool, b: usize, i: usize, j: usize) -> bool {
        (!causal || j + d.tq <= i + d.tk) && mask.is_none_or(|m| m[b * d.tk + j] > 0.5)
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// The forward for every (batch, head) pair, split over the cores (each pair's rows are
    /// computed exactly as one loop would); `probs` keeps P for the backward.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[f32]>,
        d: Dims,
        causal: bool,
        scale: f32,
        out: &mut [f32],
        probs: &mut [f32],
    ) {
        let (g, dh, tk, tq) = (d.group(), d.dh, d.tk, d.tq);
        let work = d.b * d.h * tq * tk * dh * 2;
        let outputs = [(out, tq * dh), (probs, tq * tk)];
        for_each_item(outputs, work, |first, [out, probs]| {
            let mut s = vec![0.0f64; tk];
            let mut acc = vec![0.0f64; dh];
            let pairs = out
                .chunks_exact_mut(tq * dh)
                .zip(probs.chunks_exact_mut(tq * tk));
            for (bh, (out, probs)) in (first..).zip(pairs) {
                let (b, h) = (bh / d.h, bh % d.h);
                let kv = (b * d.hkv + h / g) * tk * dh;
                for i in 0..tq {
                    let qi = &q[(bh * tq + i) * dh..][..dh];
                    // Keys past the causal bound are never visible: their P is 0.
                    let seen = if causal {
                        (i + tk + 1).saturating_sub(tq).min(tk)
                    } else {
                        tk
                    };
                    let mut m = f64::NEG_INFINITY;
                    for (j, sj) in s.iter_mut().enumerate().take(seen) {
                        *sj = if visible(d, mask, causal, b, i, j) {
                            scale as f64 * dot(qi, &k[kv + j * dh..][..dh])
                        } else {
                            f64::NEG_INFINITY
                        };
                        m = m.max(*sj);
                    }
                    let mut total = 0.0f64;
                    if m != f64::NEG_INFINITY {
                        for sj in s.iter_mut().take(seen) {
                            *sj = (*sj - m).exp();
                            total += *sj;
                        }
                    }
                    let pr = &mut probs[i * tk..(i + 1) * tk];
                    pr[seen..].fill(0.0);
                    acc.fill(0.0);
                    for (j, (pj, ej)) in pr.iter_mut().zip(&s).enumerate().take(seen) {
                        let p = if total > 0.0 { ej / total } else { 0.0 };
                        *pj = p as f32;
                        for (a, x) in acc.iter_mut().zip(&v[kv + j * dh..][..dh]) {
                            *a += p * *x as f64;
                        }
                    }
                    for (o, a) in out[i * dh..(i + 1) * dh].iter_mut().zip(&acc) {
                        *o = *a as f32;
                    }
                }
            }
        });
    }

    /// The backward for every (batch, kv head) group of query heads, split over the cores
    /// (each group's sums run in the order one loop would take).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        probs: &[f32],
        dy: &[f32],
        d: Dims,
        scale: f32,
        [dq, dk, dv]: [&mut [f32]; 3],
    ) {
        let (g, dh, tk, tq) = (d.group(), d.dh, d.tk, d.tq);
        let work = d.b * d.h * tq * tk * dh * 4;
        let outputs = [(dq, g * tq * dh), (dk, tk * dh), (dv, tk * dh)];
        for_each_item(outputs, work, |first, [dq, dk, dv]| {
            let mut ds = vec![0.0f64; tk];
            let mut dqi = vec![0.0f64; dh];
            let groups = dq
                .chunks_exact_mut(g * tq * dh)
                .zip(dk.chunks_exact_mut(tk * dh))
                .zip(dv.chunks_exact_mut(tk * dh));
            for (bk, ((dq, dk), dv)) in (first..).zip(groups) {
                let kv = bk * tk * dh;
                let mut dk_acc = vec![0.0f64; tk * dh];
                let mut dv_acc = vec![0.0f64; tk * dh];
                for hg in 0..g {
                    for i in 0..tq {
                        let row = (bk * g + hg) * tq + i;
                        let (qi, gi) = (&q[row * dh..][..dh], &dy[row * dh..][..dh]);
                        let pr = &probs[row * tk..(row + 1) * tk];
                        let mut rowsum = 0.0;
                        for (j, dsj) in ds.iter_mut().enumerate() {
                            *dsj = dot(gi, &v[kv + j * dh..][..dh]);
                            rowsum += pr[j] as f64 * *dsj;
                        }
                        dqi.fill(0.0);
                        for (j, dsj) in ds.iter_mut().enumerate() {
                            let p = pr[j] as f64;
                            *dsj = scale as f64 * p * (*dsj - rowsum);
                            let at = kv + j * dh;
                            for e in 0..dh {
                                dqi[e] += *dsj * k[at + e] as f64;
                                dk_acc[j * dh + e] += *dsj * qi[e] as f64;
                                dv_acc[j * dh + e] += p * gi[e] as f64;
                            }
                        }
                        let o = &mut dq[(hg * tq + i) * dh..][..dh];
                        for (o, a) in o.iter_mut().zip(&dqi) {
                            *o = *a as f32;
                        }
                    }
                }
                for (o, a) in dk.iter_mut().zip(&dk_acc) {
                    *o = *a as f32;
                }
                for (o, a) in dv.iter_mut().zip(&dv_acc) {
                    *o = *a as f32;
                }
            }
        });
    }
}

mod tape {
    use super::*;
    use crate::graph::{Graph, Var};

    impl Graph {
        /// Scaled dot-product attention `softmax(q k^T / sqrt(Dh)) v`: q `[B, H, Tq, Dh]`,
        /// k and v `[B, Hkv, Tk, Dh]` (grouped-query when Hkv < H), an optional key padding
        /// `mask` `[B, Tk]` (1 keep, 0 masked; a constant, no gradient) and an optional causal
        /// mask (query i sees keys `j <= i + Tk - Tq`, right for a KV cache). Output
        /// `[B, H, Tq, Dh]`; the probabilities are kept on the tape for the backward.
        pub fn attention(
            &mut self,
            q: Var,
            k: Var,
            v: Var,
            mask: Option<Var>,
            causal: bool,
        ) -> Result<Var> {
            let scale = default_scale(self.shape(q).last().copied().unwrap_or(1));
            let (y, probs) = attention_forward(
                self.value(q),
                self.value(k),
                self.value(v),
                mask.map(|m| self.value(m)),
                causal,
                scale,
            )?;
            let mut inputs = vec![q, k, v];
            inputs.extend(mask);
            Ok(self.record(y, &inputs, move |i, _, dy| {
                let (dq, dk, dv) = attention_backward(i[0], i[1], i[2], &probs, dy, scale)?;
                let mut grads = vec![Some(dq), Some(dk), Some(dv)];
                grads.resize(i.len(), None);
                Ok(grads)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::testing::{assert_close, check_gradient, gpu, random};

    /// One test configuration: sizes, whether to use a padding mask, causal.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        b: usize,
        h: usize,
        hkv: usize,
        tq: usize,
        tk: usize,
        dh: usize,
        masked: bool,
        causal: bool,
    }

    /// A padding mask that keeps a prefix of each sequence: batch entry b keeps all but
    /// `1 + 3 b` keys (at least one), except that the last of several keeps nothing, so its
    /// rows are fully masked.
    fn padding(b: usize, tk: usize) -> Vec<f32> {
        (0..b * tk)
            .map(|i| {
                let (bi, j) = (i / tk, i % tk);
                let keep = if bi + 1 == b && b > 1 {
                    0
                } else {
                    tk.saturating_sub(1 + 3 * bi).max(1)
                };
                f32::from(u8::from(j < keep))
            })
            .collect()
    }

    /// q, k, v, mask and dy of a case on `backend`, from fixed seeds (scores of order 1-3).
    fn inputs(c: Case, seed: u64, backend: &Backend) -> [Option<Tensor>; 5] {
        let t = |shape: &[usize], s: u64, scale: f32| {
            Some(
                Tensor::from_slice(backend, shape, &random(shape.iter().product(), s, scale))
                    .unwrap(),
            )
        };
        let kv = [c.b, c.hkv, c.tk, c.dh];
        let mask = c
            .masked
            .then(|| Tensor::from_slice(backend, &[c.b, c.tk], &padding(c.b, c.tk)).unwrap());
        [
            t(&[c.b, c.h, c.tq, c.dh], seed, 2.0),
            t(&kv, seed + 1, 2.0),
            t(&kv, seed + 2, 1.0),
            mask,
            t(&[c.b, c.h, c.tq, c.dh], seed + 3, 1.0),
        ]
    }

    const CASES: &[Case] = &[
        Case {
            b: 1,
            h: 1,
            hkv: 1,
            tq: 1,
            tk: 1,
            dh: 1,
            masked: false,
            causal: false,
        },
        Case {
            b: 2,
            h: 3,
            hkv: 1,
            tq: 7,
            tk: 7,
            dh: 8,
            masked: false,
            causal: true,
        },
        Case {
            b: 3,
            h: 4,
            hkv: 2,
            tq: 33,
            tk: 33,
            dh: 32,
            masked: true,
            causal: true,
        },
        // Keys split across the 256 threads of a row; KV-cache style Tq < Tk.
        Case {
            b: 1,
            h: 2,
            hkv: 2,
            tq: 5,
            tk: 257,
            dh: 16,
            masked: true,
            causal: true,
        },
        // SmolLM2-like grouped-query heads, a longer cache.
        Case {
            b: 2,
            h: 9,
            hkv: 3,
            tq: 3,
            tk: 300,
            dh: 64,
            masked: false,
            causal: true,
        },
        // MiniLM-like: 12 heads, padding mask, not causal.
        Case {
            b: 2,
            h: 12,
            hkv: 12,
            tq: 17,
            tk: 17,
            dh: 32,
            masked: true,
            causal: false,
        },
        // More queries than keys under the causal rule: the first queries see nothing.
        Case {
            b: 1,
            h: 2,
            hkv: 1,
            tq: 6,
            tk: 4,
            dh: 4,
            masked: false,
            causal: true,
        },
    ];

    #[test]
    fn gpu_matches_cpu() {
        for (n, &c) in CASES.iter().enumerate() {
            let seed = 10 * n as u64;
            let [qc, kc, vc, mc, dc] = inputs(c, seed, &Backend::Cpu);
            let [qg, kg, vg, mg, dg] = inputs(c, seed, &gpu());
            let (qc, kc, vc, dc) = (qc.unwrap(), kc.unwrap(), vc.unwrap(), dc.unwrap());
            let (qg, kg, vg, dg) = (qg.unwrap(), kg.unwrap(), vg.unwrap(), dg.unwrap());
            let scale = default_scale(c.dh);
            let (oc, pc) = attention_forward(&qc, &kc, &vc, mc.as_ref(), c.causal, scale).unwrap();
            let (og, pg) = attention_forward(&qg, &kg, &vg, mg.as_ref(), c.causal, scale).unwrap();
            // Scores are f32 sums of up to 64 products of order 4 (abs error ~1e-5), exp
            // amplifies that relatively in P, and O sums up to 300 P v terms:
            // 1e-4 relative, 1e-5 absolute for P and O.
            assert_close(&format!("P {c:?}"), &pg, &pc, 1e-4, 1e-5);
            assert_close(&format!("O {c:?}"), &og, &oc, 1e-4, 1e-5);
            for x in og.to_vec().unwrap() {
                assert!(
                    x.is_finite(),
                    "{c:?}: fully masked rows must give 0, not NaN"
                );
            }
            let (dqc, dkc, dvc) = attention_backward(&qc, &kc, &vc, &pc, &dc, scale).unwrap();
            let (dqg, dkg, dvg) = attention_backward(&qg, &kg, &vg, &pg, &dg, scale).unwrap();
            // The GPU backward starts from its own P (1e-4 relative off) and chains three f32
            // matmuls with sums of up to 300 terms with cancellation (dP - rowsum):
            // 1e-3 relative, 1e-4 absolute.
            assert_close(&format!("dq {c:?}"), &dqg, &dqc, 1e-3, 1e-4);
            assert_close(&format!("dk {c:?}"), &dkg, &dkc, 1e-3, 1e-4);
            assert_close(&format!("dv {c:?}"), &dvg, &dvc, 1e-3, 1e-4);
        }
    }

    /// Masked keys get probability 0; a query that sees no key outputs 0; the causal rule
    /// with a KV cache gives the last rows of the full causal computation.
    #[test]
    fn mask_semantics() {
        for backend in [Backend::Cpu, gpu()] {
            let c = Case {
                b: 2,
                h: 2,
                hkv: 1,
                tq: 6,
                tk: 6,
                dh: 4,
                masked: true,
                causal: true,
            };
            let [q, k, v, m, _] = inputs(c, 5, &backend);
            let (q, k, v, m) = (q.unwrap(), k.unwrap(), v.unwrap(), m.unwrap());
            let (o, p) = attention_forward(&q, &k, &v, Some(&m), true, 0.5).unwrap();
            let (o, p, mv) = (
                o.to_vec().unwrap(),
                p.to_vec().unwrap(),
                m.to_vec().unwrap(),
            );
            for (r, row) in p.chunks(6).enumerate() {
                let (b, i) = (r / 12, r % 6);
                for (j, pj) in row.iter().enumerate() {
                    if j > i || mv[b * 6 + j] == 0.0 {
                        assert_eq!(*pj, 0.0, "row {r} key {j}");
                    }
                }
                let total: f32 = row.iter().sum();
                let any = (0..=i).any(|j| mv[b * 6 + j] > 0.0);
                assert!(
                    (total - f32::from(u8::from(any))).abs() < 1e-5,
                    "row {r} sums to {total}"
                );
            }
            // Batch 1 keeps no key: all its outputs are exactly 0.
            assert!(o[o.len() / 2..].iter().all(|x| *x == 0.0));

            // KV cache: the last 2 queries against all 6 keys = rows 4, 5 of the full run.
            let full = attention(&q, &k, &v, None, true).unwrap().to_vec().unwrap();
            let qv = q.to_vec().unwrap();
            let last: Vec<f32> = qv
                .chunks(4)
                .enumerate()
                .filter(|(r, _)| r % 6 >= 4)
                .flat_map(|(_, x)| x.to_vec())
                .collect();
            let q2 = Tensor::from_slice(&backend, &[2, 2, 2, 4], &last).unwrap();
            let cached = attention(&q2, &k, &v, None, true)
                .unwrap()
                .to_vec()
                .unwrap();
            let want: Vec<f32> = full
                .chunks(4)
                .enumerate()
                .filter(|(r, _)| r % 6 >= 4)
                .flat_map(|(_, x)| x.to_vec())
                .collect();
            for (a, b) in cached.iter().zip(&want) {
                // The same sums in the same order on each backend.
                assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let c = Case {
            b: 2,
            h: 4,
            hkv: 2,
            tq: 3,
            tk: 4,
            dh: 3,
            masked: true,
            causal: true,
        };
        let [q, k, v, m, dy] = inputs(c, 3, &cpu);
        let (q, k, v, dy) = (q.unwrap(), k.unwrap(), v.unwrap(), dy.unwrap());
        let m = m.as_ref();
        let w = dy.to_vec().unwrap();
        let scale = 0.7;
        let (_, p) = attention_forward(&q, &k, &v, m, true, scale).unwrap();
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &p, &dy, scale).unwrap();
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| {
            crate::ops::testing::probe(
                &attention_forward(q, k, v, m, true, scale)
                    .unwrap()
                    .0
                    .to_vec()
                    .unwrap(),
                &w,
            )
        };
        let with = |x: &Tensor, vals: &[f32]| Tensor::from_slice(&cpu, x.shape(), vals).unwrap();
        check_gradient(
            "dq",
            &q.to_vec().unwrap(),
            &dq.to_vec().unwrap(),
            |x| loss(&with(&q, x), &k, &v),
            1e-2,
        );
        check_gradient(
            "dk",
            &k.to_vec().unwrap(),
            &dk.to_vec().unwrap(),
            |x| loss(&q, &with(&k, x), &v),
            1e-2,
        );
        check_gradient(
            "dv",
            &v.to_vec().unwrap(),
            &dv.to_vec().unwrap(),
            |x| loss(&q, &k, &with(&v, x)),
            1e-2,
        );
    }

    /// `sum(attention(q, k, v) * w)` on the tape: the same loss and gradients on both
    /// backends, matching the direct backward.
    #[test]
    fn graph_method_on_both_backends() {
        let c = Case {
            b: 1,
            h: 4,
            hkv: 2,
            tq: 5,
            tk: 5,
            dh: 8,
            masked: true,
            causal: true,
        };
        let mut results = vec![];
        for backend in [Backend::Cpu, gpu()] {
            let [q, k, v, m, w] = inputs(c, 7, &backend);
            let mut g = Graph::new(&backend);
            let q = g.input_with_grad(q.unwrap());
            let k = g.input_with_grad(k.unwrap());
            let v = g.input_with_grad(v.unwrap());
            let m = g.input(m.unwrap());
            let w = g.input(w.unwrap());
            let o = g.attention(q, k, v, Some(m), true).unwrap();
            let y = g.mul(o, w).unwrap();
            let l = g.sum_all(y).unwrap();
            let grads = g.backward(l).unwrap();
            let cpu = |t: &Tensor| t.to_backend(&Backend::Cpu).unwrap();
            results.push([
                cpu(g.value(l)),
                cpu(grads.get(q).unwrap()),
                cpu(grads.get(k).unwrap()),
                cpu(grads.get(v).unwrap()),
            ]);
        }
        // As in gpu_matches_cpu: 1e-3 relative, 1e-4 absolute.
        for (what, (a, b)) in ["loss", "dq", "dk", "dv"]
            .iter()
            .zip(results[1].iter().zip(&results[0]))
        {
            assert_close(what, a, b, 1e-3, 1e-4);
        }
        let [q, k, v, m, w] = inputs(c, 7, &Backend::Cpu);
        let (q, k, v) = (q.unwrap(), k.unwrap(), v.unwrap());
        let (_, p) = attention_forward(&q, &k, &v, m.as_ref(), true, default_scale(8)).unwrap();
        let (dq, _, _) = attention_backward(&q, &k, &v, &p, &w.unwrap(), default_scale(8)).unwrap();
        assert_close("tape dq", &results[0][1], &dq, 0.0, 0.0);
    }

    #[test]
    fn bad_shapes_are_refused() {
        for backend in [Backend::Cpu, gpu()] {
            let z = |shape: &[usize]| Tensor::zeros(&backend, shape).unwrap();
            let (q, k) = (z(&[1, 4, 3, 8]), z(&[1, 2, 5, 8]));
            let shape_err = |r: Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
            assert!(attention(&q, &k, &k, None, false).is_ok());
            assert!(
                shape_err(attention(
                    &q,
                    &z(&[1, 3, 5, 8]),
                    &z(&[1, 3, 5, 8]),
                    None,
                    false
                )),
                "H % Hkv"
            );
            assert!(
                shape_err(attention(
                    &q,
                    &z(&[1, 2, 5, 4]),
                    &z(&[1, 2, 5, 4]),
                    None,
                    false
                )),
                "Dh"
            );
            assert!(
                shape_err(attention(&q, &k, &z(&[1, 2, 6, 8]), None, false)),
                "v"
            );
            assert!(
                shape_err(attention(
                    &q,
                    &z(&[2, 2, 5, 8]),
                    &z(&[2, 2, 5, 8]),
                    None,
                    false
                )),
                "B"
            );
            assert!(
                shape_err(attention(&z(&[4, 3, 8]), &k, &k, None, false)),
                "rank"
            );
            assert!(
                shape_err(attention(&q, &k, &k, Some(&z(&[1, 4])), false)),
                "mask"
            );
            assert!(
                shape_err(attention(
                    &q,
                    &z(&[1, 0, 5, 8]),
                    &z(&[1, 0, 5, 8]),
                    None,
                    false
                )),
                "Hkv 0"
            );
            let p = z(&[1, 4, 3, 5]);
            let bad = attention_backward(&q, &k, &k, &z(&[1, 4, 3, 4]), &q, 1.0);
            assert!(matches!(bad, Err(Error::Shape { .. })), "probs");
            let bad = attention_backward(&q, &k, &k, &p, &z(&[1, 4, 3, 7]), 1.0);
            assert!(matches!(bad, Err(Error::Shape { .. })), "dy");
        }
    }
}
