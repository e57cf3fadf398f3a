//! LayerNorm (BERT) and RMSNorm (Llama) over the last axis.
//!
//! Shape key: `x` is `[.., C]` with the leading dims folded into N rows; `gamma`, `beta` are
//! `[C]`; the saved statistics `mean`, `rstd` are `[N]`.
//!   LayerNorm: xhat = (x - mean) rstd, rstd = 1 / sqrt(var + eps), y = xhat gamma + beta
//!   RMSNorm:   rstd = 1 / sqrt(mean(x^2) + eps),                  y = x rstd gamma
//! Backward (dy given), per row with g = gamma dy and means over the C columns:
//!   LayerNorm: dx = rstd (g - mean(g) - xhat mean(g xhat)),  dgamma = sum_rows dy xhat,
//!              dbeta = sum_rows dy
//!   RMSNorm:   dx = rstd (g - x rstd^2 mean(g x)),           dgamma = sum_rows dy x rstd
//! On the GPU the row sums of dgamma/dbeta are partial sums over chunks of rows followed by
//! a column sum (no float atomics).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{common_backend, grid, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::{Gpu, Kernel};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The usual epsilon (PyTorch's default, Llama's RMSNorm); BERT's LayerNorm uses 1e-12.
pub const DEFAULT_EPS: f32 = 1e-5;

/// Rows per partial sum of the parameter gradients on the GPU.
const SPAN: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    span: u32,
}

/// Check operands and return `(rows, cols)`.
fn check(
    op: &'static str,
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(usize, usize)> {
    require_f32(op, &[x, gamma])?;
    let c = *x
        .shape()
        .last()
        .ok_or_else(|| Error::shape(op, "rank-0 input has no last axis"))?;
    if c == 0 {
        return Err(Error::shape(
            op,
            format!("input {:?} has an empty last axis", x.shape()),
        ));
    }
    for (name, t) in [("gamma", Some(gamma)), ("beta", beta)] {
        if let Some(t) = t {
            require_f32(op, &[t])?;
            if t.shape() != [c] {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} {:?} for input {:?} must be [{c}]",
                        t.shape(),
                        x.shape()
                    ),
                ));
            }
        }
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::Invalid(format!(
            "{op}: eps must be finite and >= 0, got {eps}"
        )));
    }
    u32_len(op, x.numel())?;
    Ok((x.numel() / c, c))
}

/// Check the backward's extra operands: `dy` like `x`, one statistic per row.
fn check_backward(
    op: &'static str,
    x: &Tensor,
    dy: &Tensor,
    stats: &[&Tensor],
    rows: usize,
) -> Result<()> {
    require_f32(op, &[dy])?;
    require_f32(op, stats)?;
    if dy.shape() != x.shape() {
        return Err(Error::shape(
            op,
            format!("backward: x {:?} vs dy {:?}", x.shape(), dy.shape()),
        ));
    }
    if let Some(s) = stats.iter().find(|s| s.numel() != rows) {
        return Err(Error::shape(
            op,
            format!(
                "backward: {rows} rows need {rows} saved statistics, got {:?}",
                s.shape()
            ),
        ));
    }
    Ok(())
}

fn params(op: &'static str, rows: usize, cols: usize, eps: f32) -> Result<Params> {
    Ok(Params {
        rows: u32_len(op, rows)?,
        cols: u32_len(op, cols)?,
        eps,
        span: SPAN as u32,
    })
}

/// LayerNorm over the last axis: returns `(y, mean, rstd)`, the statistics `[N]` saved for
/// [`layer_norm_backward`].
pub fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm";
    let backend = common_backend(op, &[x, gamma, beta])?;
    let (rows, cols) = check(op, x, gamma, Some(beta), eps)?;
    let y = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    let mean = Tensor::uninit(&backend, &[rows], DType::F32)?;
    let rstd = Tensor::uninit(&backend, &[rows], DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::layer_norm(
            &x.cpu_read()?,
            &gamma.cpu_read()?,
            &beta.cpu_read()?,
            eps,
            &mut y.cpu_write()?,
            &mut mean.cpu_write()?,
            &mut rstd.cpu_write()?,
        ),
        Backend::Gpu(gpu) => gpu.dispatch(
            Kernel::f32("norm", "ln_fwd"),
            bytemuck::bytes_of(&params(op, rows, cols, eps)?),
            &[
                x.bind(1)?,
                gamma.bind(2)?,
                beta.bind(3)?,
                y.bind(7)?,
                mean.bind(8)?,
                rstd.bind(9)?,
            ],
            groups_for(rows),
        )?,
    }
    Ok((y, mean, rstd))
}

/// Gradients of [`layer_norm`]: `(dx, dgamma, dbeta)` from the input, `gamma`, the saved
/// `mean` and `rstd`, and `dy`.
pub fn layer_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm";
    let backend = common_backend(op, &[x, gamma, mean, rstd, dy])?;
    let (rows, cols) = check(op, x, gamma, None, 0.0)?;
    check_backward(op, x, dy, &[mean, rstd], rows)?;
    let dx = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => {
            let dgamma = Tensor::uninit(&backend, &[cols], DType::F32)?;
            let dbeta = Tensor::uninit(&backend, &[cols], DType::F32)?;
            cpu::layer_norm_backward(
                &x.cpu_read()?,
                &gamma.cpu_read()?,
                &mean.cpu_read()?,
                &rstd.cpu_read()?,
                &dy.cpu_read()?,
                &mut dx.cpu_write()?,
                &mut dgamma.cpu_write()?,
                &mut dbeta.cpu_write()?,
            );
            Ok((dx, dgamma, dbeta))
        }
        Backend::Gpu(gpu) => {
            gpu.dispatch(
                Kernel::f32("norm", "ln_bwd"),
                bytemuck::bytes_of(&params(op, rows, cols, 0.0)?),
                &[
                    x.bind(1)?,
                    gamma.bind(2)?,
                    dy.bind(4)?,
                    mean.bind(5)?,
                    rstd.bind(6)?,
                    dx.bind(7)?,
                ],
                groups_for(rows),
            )?;
            let (dgamma, dbeta) = gpu_ln_param_grads(gpu, x, dy, mean, rstd, rows, cols)?;
            Ok((dx, dgamma, dbeta))
        }
    }
}

/// RMSNorm over the last axis: returns `(y, rstd)`, the statistic `[N]` saved for
/// [`rms_norm_backward`].
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "rms_norm";
    let backend = common_backend(op, &[x, gamma])?;
    let (rows, cols) = check(op, x, gamma, None, eps)?;
    let y = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    let rstd = Tensor::uninit(&backend, &[rows], DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::rms_norm(
            &x.cpu_read()?,
            &gamma.cpu_read()?,
            eps,
            &mut y.cpu_write()?,
            &mut rstd.cpu_write()?,
        ),
        Backend::Gpu(gpu) => gpu.dispatch(
            Kernel::f32("norm", "rms_fwd"),
            bytemuck::bytes_of(&params(op, rows, cols, eps)?),
            &[x.bind(1)?, gamma.bind(2)?, y.bind(7)?, rstd.bind(9)?],
            groups_for(rows),
        )?,
    }
    Ok((y, rstd))
}

/// Gradients of [`rms_norm`]: `(dx, dgamma)` from the input, `gamma`, the saved `rstd` and
/// `dy`.
pub fn rms_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let op = "rms_norm";
    let backend = common_backend(op, &[x, gamma, rstd, dy])?;
    let (rows, cols) = check(op, x, gamma, None, 0.0)?;
    check_backward(op, x, dy, &[rstd], rows)?;
    let dx = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => {
            let dgamma = Tensor::uninit(&backend, &[cols], DType::F32)?;
            cpu::rms_norm_backward(
                &x.cpu_read()?,
                &gamma.cpu_read()?,
                &rstd.cpu_read()?,
                &dy.cpu_read()?,
                &mut dx.cpu_write()?,
                &mut dgamma.cpu_write()?,
            );
            Ok((dx, dgamma))
        }
        Backend::Gpu(gpu) => {
            gpu.dispatch(
                Kernel::f32("norm", "rms_bwd"),
                bytemuck::bytes_of(&params(op, rows, cols, 0.0)?),
                &[
                    x.bind(1)?,
                    gamma.bind(2)?,
                    dy.bind(4)?,
                    rstd.bind(6)?,
                    dx.bind(7)?,
                ],
                groups_for(rows),
            )?;
            Ok((dx, gpu_rms_param_grad(gpu, x, dy, rstd, rows, cols)?))
        }
    }
}

/// Chunks of `SPAN` rows for the partial parameter sums (one even for zero rows, so the
/// result is written), and the launch parameters shared by the partial-sum kernels.
fn partial_layout(op: &'static str, rows: usize, cols: usize) -> Result<(usize, Params)> {
    let chunks = rows.div_ceil(SPAN).max(1);
    u32_len(op, chunks * cols)?;
    Ok((chunks, params(op, rows, cols, 0.0)?))
}

/// LayerNorm's `(dgamma, dbeta)` on the GPU: partial column sums over chunks of `SPAN`
/// rows, then one column sum over the chunks.
fn gpu_ln_param_grads(
    gpu: &Arc<Gpu>,
    x: &Tensor,
    dy: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<(Tensor, Tensor)> {
    let op = "layer_norm";
    let (chunks, params) = partial_layout(op, rows, cols)?;
    let backend = x.backend();
    let part_gamma = Tensor::uninit(&backend, &[chunks, cols], DType::F32)?;
    let part_beta = Tensor::uninit(&backend, &[chunks, cols], DType::F32)?;
    gpu.dispatch(
        Kernel::f32("norm", "ln_params"),
        bytemuck::bytes_of(&params),
        &[
            x.bind(1)?,
            dy.bind(4)?,
            mean.bind(5)?,
            rstd.bind(6)?,
            part_gamma.bind(10)?,
            part_beta.bind(11)?,
        ],
        grid(chunks * cols, 256),
    )?;
    Ok((
        column_sum(gpu, op, &part_gamma, chunks, cols)?,
        column_sum(gpu, op, &part_beta, chunks, cols)?,
    ))
}

/// RMSNorm's dgamma on the GPU, as [`gpu_ln_param_grads`].
fn gpu_rms_param_grad(
    gpu: &Arc<Gpu>,
    x: &Tensor,
    dy: &Tensor,
    rstd: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<Tensor> {
    let op = "rms_norm";
    let (chunks, params) = partial_layout(op, rows, cols)?;
    let part_gamma = Tensor::uninit(&x.backend(), &[chunks, cols], DType::F32)?;
    gpu.dispatch(
        Kernel::f32("norm", "rms_params"),
        bytemuck::bytes_of(&params),
        &[x.bind(1)?, dy.bind(4)?, rstd.bind(6)?, part_gamma.bind(10)?],
        grid(chunks * cols, 256),
    )?;
    column_sum(gpu, op, &part_gamma, chunks, cols)
}

/// Sum a `[chunks, cols]` tensor over its rows, giving `[cols]`.
fn column_sum(
    gpu: &Arc<Gpu>,
    op: &'static str,
    parts: &Tensor,
    chunks: usize,
    cols: usize,
) -> Result<Tensor> {
    if chunks == 1 {
        return parts.reshape(&[cols]);
    }
    let out = Tensor::uninit(&parts.backend(), &[cols], DType::F32)?;
    gpu.dispatch(
        Kernel::f32("norm", "col_sum"),
        bytemuck::bytes_of(&params(op, chunks, cols, 0.0)?),
        &[parts.bind(12)?, out.bind(7)?],
        grid(cols, 256),
    )?;
    Ok(out)
}

/// The CPU reference (f64 internally). Slices hold whole rows of `gamma.len() > 0` columns
/// and one statistic per row.
pub(crate) mod cpu {
    pub(crate) fn layer_norm(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        let c = gamma.len();
        let rows = x.chunks_exact(c).zip(y.chunks_exact_mut(c));
        for ((row, out), (m, r)) in rows.zip(mean.iter_mut().zip(rstd.iter_mut())) {
            let mu = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / c as f64;
            let rs = 1.0 / (var + eps as f64).sqrt();
            for (((o, &v), &g), &b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = ((v as f64 - mu) * rs * g as f64 + b as f64) as f32;
            }
            *m = mu as f32;
            *r = rs as f32;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_backward(
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let c = gamma.len();
        let mut dg = vec![0.0f64; c];
        let mut db = vec![0.0f64; c];
        let rows = x
            .chunks_exact(c)
            .zip(dy.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c));
        for (((row, g), out), (&mu, &rs)) in rows.zip(mean.iter().zip(rstd)) {
            let (mu, rs) = (mu as f64, rs as f64);
            let xhat: Vec<f64> = row.iter().map(|&v| (v as f64 - mu) * rs).collect();
            let gg: Vec<f64> = g
                .iter()
                .zip(gamma)
                .map(|(&d, &w)| d as f64 * w as f64)
                .collect();
            let m1 = gg.iter().sum::<f64>() / c as f64;
            let m2 = gg.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c as f64;
            for (((o, a), h), (&d, (dgj, dbj))) in out
                .iter_mut()
                .zip(&gg)
                .zip(&xhat)
                .zip(g.iter().zip(dg.iter_mut().zip(db.iter_mut())))
            {
                *o = (rs * (a - m1 - h * m2)) as f32;
                *dgj += d as f64 * h;
                *dbj += d as f64;
            }
        }
        for (o, v) in dgamma.iter_mut().zip(dg) {
            *o = v as f32;
        }
        for (o, v) in dbeta.iter_mut().zip(db) {
            *o = v as f32;
        }
    }

    pub(crate) fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
        let c = gamma.len();
        for ((row, out), r) in x
            .chunks_exact(c)
            .zip(y.chunks_exact_mut(c))
            .zip(rstd.iter_mut())
        {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
            let rs = 1.0 / (ms + eps as f64).sqrt();
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(gamma) {
                *o = (v as f64 * rs * g as f64) as f32;
            }
            *r = rs as f32;
        }
    }

    pub(crate) fn rms_norm_backward(
        x: &[f32],
        gamma: &[f32],
        rstd: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
    ) {
        let c = gamma.len();
        let mut dg = vec![0.0f64; c];
        let rows = x
            .chunks_exact(c)
            .zip(dy.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c));
        for (((row, g), out), &rs) in rows.zip(rstd) {
            let rs = rs as f64;
            let k = row
                .iter()
                .zip(g)
                .zip(gamma)
                .map(|((&v, &d), &w)| v as f64 * d as f64 * w as f64)
                .sum::<f64>()
                / c as f64
                * rs
                * rs;
            for (((o, &v), &d), (&w, dgj)) in out
                .iter_mut()
                .zip(row)
                .zip(g)
                .zip(gamma.iter().zip(dg.iter_mut()))
            {
                *o = (rs * (w as f64 * d as f64 - v as f64 * k)) as f32;
                *dgj += d as f64 * v as f64 * rs;
            }
        }
        for (o, v) in dgamma.iter_mut().zip(dg) {
            *o = v as f32;
        }
    }
}

mod tape {
    use super::*;
    use crate::graph::{Graph, Var};

    impl Graph {
        /// LayerNorm of `x` over its last axis with `gamma` and `beta` (`[C]`, usually
        /// parameters) and `eps` (BERT: 1e-12; see [`DEFAULT_EPS`]). The row statistics are
        /// kept for the backward.
        pub fn layer_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f32) -> Result<Var> {
            let (y, mean, rstd) =
                layer_norm(self.value(x), self.value(gamma), self.value(beta), eps)?;
            Ok(self.record(y, &[x, gamma, beta], move |i, _, dy| {
                let (dx, dgamma, dbeta) = layer_norm_backward(i[0], i[1], &mean, &rstd, dy)?;
                Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
            }))
        }

        /// RMSNorm of `x` over its last axis with `gamma` (`[C]`, usually a parameter) and
        /// `eps` (Llama: 1e-5, [`DEFAULT_EPS`]). The row statistic is kept for the backward.
        pub fn rms_norm(&mut self, x: Var, gamma: Var, eps: f32) -> Result<Var> {
            let (y, rstd) = rms_norm(self.value(x), self.value(gamma), eps)?;
            Ok(self.record(y, &[x, gamma], move |i, _, dy| {
                let (dx, dgamma) = rms_norm_backward(i[0], i[1], &rstd, dy)?;
                Ok(vec![Some(dx), Some(dgamma)])
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    /// Rows x columns: single elements, columns below, at and above one workgroup (columns
    /// split across threads), and rows beyond one chunk of the parameter-gradient sums
    /// (300 rows: 5 chunks of 64, the last partial).
    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (7, 1),
        (1, 7),
        (33, 257),
        (5, 1000),
        (300, 3),
        (130, 768),
    ];

    fn shifted(n: usize, c: usize, seed: u64) -> (Tensor, Tensor) {
        // Rows with an offset, to exercise the centring.
        let v: Vec<f32> = random(n * c, seed, 2.0)
            .iter()
            .enumerate()
            .map(|(i, x)| x + (i / c % 5) as f32)
            .collect();
        (
            Tensor::from_slice(&Backend::Cpu, &[n, c], &v).unwrap(),
            Tensor::from_slice(&gpu(), &[n, c], &v).unwrap(),
        )
    }

    fn affine(c: usize, seed: u64) -> (Tensor, Tensor) {
        let v: Vec<f32> = random(c, seed, 0.5).iter().map(|x| x + 1.0).collect();
        (
            Tensor::from_slice(&Backend::Cpu, &[c], &v).unwrap(),
            Tensor::from_slice(&gpu(), &[c], &v).unwrap(),
        )
    }

    #[test]
    fn layer_norm_gpu_matches_cpu() {
        for (i, &(n, c)) in SHAPES.iter().enumerate() {
            let s = i as u64 * 10;
            let (xc, xg) = shifted(n, c, s);
            let (gc, gg) = affine(c, s + 1);
            let (bc, bg) = pair(&[c], s + 2);
            let (dc, dg) = pair(&[n, c], s + 3);
            for eps in [DEFAULT_EPS, 1e-12] {
                let what = format!("[{n}, {c}] eps {eps}");
                let (yc, mc, rc) = layer_norm(&xc, &gc, &bc, eps).unwrap();
                let (yg, mg, rg) = layer_norm(&xg, &gg, &bg, eps).unwrap();
                // Outputs of order 1-3 from f32 row sums of up to 1000 terms: 1e-5 relative
                // + 1e-5 absolute (xhat near 0 carries the mean's absolute error).
                assert_close(&format!("ln y {what}"), &yg, &yc, 1e-5, 1e-5);
                assert_close(&format!("ln mean {what}"), &mg, &mc, 1e-5, 1e-6);
                // rstd from a centred variance: 1e-5 relative. With C = 1 the variance is 0
                // and rstd = 1/sqrt(eps) on both sides.
                assert_close(&format!("ln rstd {what}"), &rg, &rc, 1e-5, 0.0);
                if c == 1 {
                    continue; // dx and dgamma are exactly 0; rstd = 1e6 only magnifies rounding.
                }
                // Same saved statistics on both sides, so only the backward kernels differ.
                let (mg, rg) = (
                    mc.to_backend(&gpu()).unwrap(),
                    rc.to_backend(&gpu()).unwrap(),
                );
                let (dxc, dgc, dbc) = layer_norm_backward(&xc, &gc, &mc, &rc, &dc).unwrap();
                let (dxg, dgg, dbg) = layer_norm_backward(&xg, &gg, &mg, &rg, &dg).unwrap();
                // dx subtracts two row means from g: cancellation at the scale of rstd * |g|
                // (about 3): 1e-5 relative + 1e-5 absolute.
                assert_close(&format!("ln dx {what}"), &dxg, &dxc, 1e-5, 1e-5);
                // Column sums over up to 300 rows of terms of order 1, summed in a different
                // order: 1e-5 relative + 1e-5 absolute.
                assert_close(&format!("ln dgamma {what}"), &dgg, &dgc, 1e-5, 1e-5);
                assert_close(&format!("ln dbeta {what}"), &dbg, &dbc, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn rms_norm_gpu_matches_cpu() {
        for (i, &(n, c)) in SHAPES.iter().enumerate() {
            let s = 100 + i as u64 * 10;
            let (xc, xg) = shifted(n, c, s);
            let (gc, gg) = affine(c, s + 1);
            let (dc, dg) = pair(&[n, c], s + 3);
            let what = format!("[{n}, {c}]");
            let (yc, rc) = rms_norm(&xc, &gc, DEFAULT_EPS).unwrap();
            let (yg, rg) = rms_norm(&xg, &gg, DEFAULT_EPS).unwrap();
            // A sum of squares (no cancellation) and one product per element: 1e-5 relative
            // + 1e-6 absolute.
            assert_close(&format!("rms y {what}"), &yg, &yc, 1e-5, 1e-6);
            assert_close(&format!("rms rstd {what}"), &rg, &rc, 1e-5, 0.0);
            let rg = rc.to_backend(&gpu()).unwrap();
            let (dxc, dgc) = rms_norm_backward(&xc, &gc, &rc, &dc).unwrap();
            let (dxg, dgg) = rms_norm_backward(&xg, &gg, &rg, &dg).unwrap();
            // dx subtracts a row mean from gamma dy: 1e-5 relative + 1e-5 absolute.
            assert_close(&format!("rms dx {what}"), &dxg, &dxc, 1e-5, 1e-5);
            // Column sums over up to 300 rows, different order: 1e-5 relative + 1e-5 absolute.
            assert_close(&format!("rms dgamma {what}"), &dgg, &dgc, 1e-5, 1e-5);
        }
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let (n, c) = (3, 5);
        let xv = random(n * c, 1, 2.0);
        let gv: Vec<f32> = random(c, 2, 0.5).iter().map(|v| v + 1.0).collect();
        let bv = random(c, 3, 1.0);
        let w = random(n * c, 4, 1.0);
        let t = |shape: &[usize], v: &[f32]| Tensor::from_slice(&cpu, shape, v).unwrap();
        let (_, mean, rstd) =
            layer_norm(&t(&[n, c], &xv), &t(&[c], &gv), &t(&[c], &bv), DEFAULT_EPS).unwrap();
        let (dx, dg, db) = layer_norm_backward(
            &t(&[n, c], &xv),
            &t(&[c], &gv),
            &mean,
            &rstd,
            &t(&[n, c], &w),
        )
        .unwrap();
        let f = |x: &[f32], g: &[f32], b: &[f32]| {
            probe(
                &layer_norm(&t(&[n, c], x), &t(&[c], g), &t(&[c], b), DEFAULT_EPS)
                    .unwrap()
                    .0
                    .to_vec()
                    .unwrap(),
                &w,
            )
        };
        check_gradient(
            "ln dx",
            &xv,
            &dx.to_vec().unwrap(),
            |x| f(x, &gv, &bv),
            1e-2,
        );
        check_gradient(
            "ln dgamma",
            &gv,
            &dg.to_vec().unwrap(),
            |g| f(&xv, g, &bv),
            1e-2,
        );
        check_gradient(
            "ln dbeta",
            &bv,
            &db.to_vec().unwrap(),
            |b| f(&xv, &gv, b),
            1e-2,
        );
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let (n, c) = (3, 5);
        let xv = random(n * c, 5, 2.0);
        let gv: Vec<f32> = random(c, 6, 0.5).iter().map(|v| v + 1.0).collect();
        let w = random(n * c, 7, 1.0);
        let t = |shape: &[usize], v: &[f32]| Tensor::from_slice(&cpu, shape, v).unwrap();
        let (_, rstd) = rms_norm(&t(&[n, c], &xv), &t(&[c], &gv), DEFAULT_EPS).unwrap();
        let (dx, dg) =
            rms_norm_backward(&t(&[n, c], &xv), &t(&[c], &gv), &rstd, &t(&[n, c], &w)).unwrap();
        let f = |x: &[f32], g: &[f32]| {
            probe(
                &rms_norm(&t(&[n, c], x), &t(&[c], g), DEFAULT_EPS)
                    .unwrap()
                    .0
                    .to_vec()
                    .unwrap(),
                &w,
            )
        };
        check_gradient("rms dx", &xv, &dx.to_vec().unwrap(), |x| f(x, &gv), 1e-2);
        check_gradient(
            "rms dgamma",
            &gv,
            &dg.to_vec().unwrap(),
            |g| f(&xv, g),
            1e-2,
        );
    }

    /// `sum(w * rms_norm(layer_norm(x)))` on the tape, with gamma and beta as leaves that
    /// receive gradients: CPU gradients match finite differences, the GPU tape the CPU tape.
    #[test]
    fn graph_methods_on_both_backends() {
        let (n, c) = (4, 6);
        let xv = random(n * c, 8, 2.0);
        let g1: Vec<f32> = random(c, 9, 0.5).iter().map(|v| v + 1.0).collect();
        let b1 = random(c, 10, 0.5);
        let g2: Vec<f32> = random(c, 11, 0.5).iter().map(|v| v + 1.0).collect();
        let w = random(n * c, 12, 1.0);
        // Leaves in order: x, gamma1, beta1, gamma2.
        let run = |b: &Backend, leaves: [&[f32]; 4]| {
            let mut g = Graph::new(b);
            let shapes: [&[usize]; 4] = [&[n, c], &[c], &[c], &[c]];
            let vars: Vec<_> = leaves
                .iter()
                .zip(shapes)
                .map(|(v, s)| g.input_with_grad(Tensor::from_slice(b, s, v).unwrap()))
                .collect();
            let wv = g.input(Tensor::from_slice(b, &[n, c], &w).unwrap());
            let h = g.layer_norm(vars[0], vars[1], vars[2], 1e-12).unwrap();
            let h = g.rms_norm(h, vars[3], DEFAULT_EPS).unwrap();
            let h = g.mul(h, wv).unwrap();
            let loss = g.sum_all(h).unwrap();
            let value = g.value(loss).item().unwrap();
            let grads = g.backward(loss).unwrap();
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| grads.get(*v).unwrap().clone())
                .collect();
            (value, grads)
        };
        let leaves: [&[f32]; 4] = [&xv, &g1, &b1, &g2];
        let (vc, gc) = run(&Backend::Cpu, leaves);
        let (vg, gg) = run(&gpu(), leaves);
        // Sums of 24 terms of order 1: 1e-5 relative + 1e-5 absolute, for value and gradients.
        assert!((vc - vg).abs() <= 1e-5 + 1e-5 * vc.abs(), "{vc} vs {vg}");
        for (k, (a, b)) in gg.iter().zip(&gc).enumerate() {
            assert_close(&format!("tape grad {k}"), a, b, 1e-5, 1e-5);
        }
        for k in 0..4 {
            let f = |v: &[f32]| {
                let mut l = leaves;
                l[k] = v;
                run(&Backend::Cpu, l).0 as f64
            };
            check_gradient(
                &format!("tape leaf {k}"),
                leaves[k],
                &gc[k].to_vec().unwrap(),
                f,
                1e-2,
            );
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        for b in [Backend::Cpu, gpu()] {
            let x = Tensor::zeros(&b, &[2, 3]).unwrap();
            let g3 = Tensor::zeros(&b, &[3]).unwrap();
            let g4 = Tensor::zeros(&b, &[4]).unwrap();
            let shape_err = |r: Result<()>| matches!(r, Err(Error::Shape { .. }));
            assert!(shape_err(layer_norm(&x, &g4, &g3, 1e-5).map(drop)));
            assert!(shape_err(layer_norm(&x, &g3, &g4, 1e-5).map(drop)));
            assert!(shape_err(rms_norm(&x, &g4, 1e-5).map(drop)));
            assert!(shape_err(
                rms_norm(
                    &Tensor::zeros(&b, &[2, 0]).unwrap(),
                    &Tensor::zeros(&b, &[0]).unwrap(),
                    1e-5
                )
                .map(drop)
            ));
            let (_, mean, rstd) = layer_norm(&x, &g3, &g3, 1e-5).unwrap();
            let dy_bad = Tensor::zeros(&b, &[3, 2]).unwrap();
            assert!(shape_err(
                layer_norm_backward(&x, &g3, &mean, &rstd, &dy_bad).map(drop)
            ));
            assert!(
                shape_err(layer_norm_backward(&x, &g3, &g3, &rstd, &x).map(drop)),
                "stats of the wrong length"
            );
            assert!(shape_err(
                rms_norm_backward(&x, &g3, &rstd, &dy_bad).map(drop)
            ));
            assert!(matches!(rms_norm(&x, &g3, -1.0), Err(Error::Invalid(_))));
        }
        let rank0 = Tensor::from_slice(&Backend::Cpu, &[], &[1.0]).unwrap();
        let g1 = Tensor::zeros(&Backend::Cpu, &[1]).unwrap();
        assert!(matches!(
            rms_norm(&rank0, &g1, 1e-5),
            Err(Error::Shape { .. })
        ));
    }
}
