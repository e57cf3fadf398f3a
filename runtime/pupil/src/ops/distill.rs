//! Distillation losses, each a `[1]` tensor: KL divergence with temperature (Hinton et al.),
//! mean squared error and the cosine-embedding loss. Backward rules read the scalar output
//! gradient `dy` (`[1]`) on the device, so no step waits for the GPU.
//!
//! Shape key: logits and embeddings are `[N, C]` (leading dims fold into N rows); MSE takes
//! any two tensors of one shape with n elements.
//!   KL:     L = T^2 / N sum_r sum_j p_rj (log p_rj - log q_rj), p = softmax(t / T) (teacher,
//!           a constant), q = softmax(s / T) (student).
//!           dL/ds_rj = T^2 / N * (q_rj - p_rj) / T = T (q_rj - p_rj) / N
//!           (log q_rj = s_rj / T - logsumexp(s_r / T) and sum_j p_rj = 1.)
//!   MSE:    L = mean (a - b)^2,  da = 2 (a - b) / n,  db = -da.
//!   Cosine: L = 1/N sum_r (1 - c_r), c = a.b / (na nb), na = max(|a|, eps), eps = 1e-8;
//!           da = -(b / (na nb) - [|a| > eps] c a / na^2) / N, db likewise (a clamped norm
//!           is a constant).
//! Every gradient is then multiplied by dy.

use bytemuck::{Pod, Zeroable};

use super::{common_backend, grid, groups_for, reduce, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The floor under each vector norm in [`cosine_loss`], guarding zero vectors.
pub const COSINE_EPS: f32 = 1e-8;

/// Elements per partial sum of the MSE on the GPU.
const CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    _pad0: u32,
    scale: f32,
    inv_t: f32,
    eps: f32,
    _pad1: u32,
}

impl Params {
    fn new(op: &'static str, rows: usize, cols: usize, n: usize) -> Result<Params> {
        Ok(Params {
            rows: u32_len(op, rows)?,
            cols: u32_len(op, cols)?,
            n: u32_len(op, n)?,
            _pad0: 0,
            scale: 1.0,
            inv_t: 1.0,
            eps: COSINE_EPS,
            _pad1: 0,
        })
    }
}

/// Check two same-shaped f32 operands on one backend.
fn check_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Backend> {
    let backend = common_backend(op, &[a, b])?;
    require_f32(op, &[a, b])?;
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("operands {:?} and {:?} differ", a.shape(), b.shape()),
        ));
    }
    Ok(backend)
}

/// `(rows, cols)` of a `[.., C]` operand pair with C >= 1.
fn rows_cols(op: &'static str, a: &Tensor, b: &Tensor) -> Result<(Backend, usize, usize)> {
    let backend = check_pair(op, a, b)?;
    let c = *a
        .shape()
        .last()
        .ok_or_else(|| Error::shape(op, "rank-0 operands have no rows"))?;
    if c == 0 {
        return Err(Error::shape(
            op,
            format!("operands {:?} have an empty last axis", a.shape()),
        ));
    }
    Ok((backend, a.numel() / c, c))
}

/// The output gradient of a scalar loss: one element on the operands' backend.
fn check_dy(op: &'static str, operands: &[&Tensor], dy: &Tensor) -> Result<()> {
    if dy.numel() != 1 {
        return Err(Error::shape(
            op,
            format!(
                "loss gradient dy must have one element, has shape {:?}",
                dy.shape()
            ),
        ));
    }
    require_f32(op, &[dy])?;
    let mut all = operands.to_vec();
    all.push(dy);
    common_backend(op, &all).map(drop)
}

/// The value of a checked one-element CPU gradient.
fn cpu_scalar(dy: &Tensor) -> Result<f32> {
    dy.cpu_read()?
        .first()
        .copied()
        .ok_or_else(|| Error::shape("loss backward", "empty dy"))
}

fn check_temperature(t: f32) -> Result<()> {
    if t > 0.0 && t.is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "kl_div_temperature: temperature must be finite and > 0, got {t}"
        )))
    }
}

/// Per-row `T^2 KL(p_r || q_r)`, `[N]`.
fn kl_rows(student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<Tensor> {
    let op = "kl_div_temperature";
    let (backend, rows, cols) = rows_cols(op, student, teacher)?;
    check_temperature(temperature)?;
    let per_row = Tensor::uninit(&backend, &[rows], DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::kl_rows(
            &student.cpu_read()?,
            &teacher.cpu_read()?,
            temperature,
            &mut per_row.cpu_write()?,
            cols,
        ),
        Backend::Gpu(gpu) => {
            let params = Params {
                scale: temperature * temperature,
                inv_t: 1.0 / temperature,
                ..Params::new(op, rows, cols, student.numel())?
            };
            gpu.dispatch(
                Kernel::f32("distill", "kl_rows"),
                bytemuck::bytes_of(&params),
                &[student.bind(1)?, teacher.bind(2)?, per_row.bind(4)?],
                groups_for(rows),
            )?;
        }
    }
    Ok(per_row)
}

/// The distillation loss `T^2 KL(softmax(teacher / T) || softmax(student / T))`, averaged
/// over rows, as `[1]`; `student` and `teacher` are logits of one shape `[.., C]`.
pub fn kl_div_temperature(student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<Tensor> {
    reduce::mean_all(&kl_rows(student, teacher, temperature)?)
}

/// Gradient of [`kl_div_temperature`] with respect to the student logits (the teacher is a
/// constant): `dy T (softmax(s / T) - softmax(t / T)) / N`, `dy` the `[1]` output gradient.
pub fn kl_div_temperature_backward(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f32,
    dy: &Tensor,
) -> Result<Tensor> {
    let op = "kl_div_temperature";
    let (backend, rows, cols) = rows_cols(op, student, teacher)?;
    check_temperature(temperature)?;
    check_dy(op, &[student], dy)?;
    let ds = Tensor::uninit(&backend, student.shape(), DType::F32)?;
    let scale = temperature / rows.max(1) as f32;
    match &backend {
        Backend::Cpu => cpu::kl_backward(
            &student.cpu_read()?,
            &teacher.cpu_read()?,
            temperature,
            cpu_scalar(dy)? * scale,
            &mut ds.cpu_write()?,
            cols,
        ),
        Backend::Gpu(gpu) => {
            let params = Params {
                scale,
                inv_t: 1.0 / temperature,
                ..Params::new(op, rows, cols, student.numel())?
            };
            gpu.dispatch(
                Kernel::f32("distill", "kl_bwd"),
                bytemuck::bytes_of(&params),
                &[student.bind(1)?, teacher.bind(2)?, dy.bind(3)?, ds.bind(4)?],
                groups_for(rows),
            )?;
        }
    }
    Ok(ds)
}

/// Mean squared error `mean((a - b)^2)` over all elements of two same-shaped tensors, `[1]`.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "mse";
    let backend = check_pair(op, a, b)?;
    let n = a.numel();
    let scale = 1.0 / n.max(1) as f32;
    match &backend {
        Backend::Cpu => {
            let out = Tensor::uninit(&backend, &[1], DType::F32)?;
            cpu::mse(&a.cpu_read()?, &b.cpu_read()?, &mut out.cpu_write()?);
            Ok(out)
        }
        Backend::Gpu(gpu) => {
            // Partial sums of chunks (already scaled by 1/n), then their sum.
            let chunks = n.div_ceil(CHUNK).max(1);
            let partial = Tensor::uninit(&backend, &[chunks], DType::F32)?;
            let params = Params {
                scale,
                ..Params::new(op, chunks, CHUNK, n)?
            };
            gpu.dispatch(
                Kernel::f32("distill", "sq_diff_rows"),
                bytemuck::bytes_of(&params),
                &[a.bind(1)?, b.bind(2)?, partial.bind(4)?],
                groups_for(chunks),
            )?;
            if chunks == 1 {
                Ok(partial)
            } else {
                reduce::sum_all(&partial)
            }
        }
    }
}

/// Gradients of [`mse`]: `(da, db) = (dy 2 (a - b) / n, -da)`, `dy` the `[1]` output
/// gradient.
pub fn mse_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "mse";
    let backend = check_pair(op, a, b)?;
    check_dy(op, &[a], dy)?;
    let n = a.numel();
    let scale = 2.0 / n.max(1) as f32;
    let da = Tensor::uninit(&backend, a.shape(), DType::F32)?;
    let db = Tensor::uninit(&backend, a.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::mse_backward(
            &a.cpu_read()?,
            &b.cpu_read()?,
            cpu_scalar(dy)? * scale,
            &mut da.cpu_write()?,
            &mut db.cpu_write()?,
        ),
        Backend::Gpu(gpu) => {
            let params = Params {
                scale,
                ..Params::new(op, 1, 1, n)?
            };
            gpu.dispatch(
                Kernel::f32("distill", "mse_bwd"),
                bytemuck::bytes_of(&params),
                &[
                    a.bind(1)?,
                    b.bind(2)?,
                    dy.bind(3)?,
                    da.bind(4)?,
                    db.bind(5)?,
                ],
                grid(n, 256),
            )?;
        }
    }
    Ok((da, db))
}

/// Per-row `1 - cos(a_r, b_r)`, `[N]`.
fn cosine_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "cosine_loss";
    let (backend, rows, cols) = rows_cols(op, a, b)?;
    let per_row = Tensor::uninit(&backend, &[rows], DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::cos_rows(
            &a.cpu_read()?,
            &b.cpu_read()?,
            &mut per_row.cpu_write()?,
            cols,
        ),
        Backend::Gpu(gpu) => gpu.dispatch(
            Kernel::f32("distill", "cos_rows"),
            bytemuck::bytes_of(&Params::new(op, rows, cols, a.numel())?),
            &[a.bind(1)?, b.bind(2)?, per_row.bind(4)?],
            groups_for(rows),
        )?,
    }
    Ok(per_row)
}

/// Cosine-embedding loss `mean_r (1 - cos(a_r, b_r))` over the rows of two `[.., D]`
/// tensors, `[1]`; each norm is floored at [`COSINE_EPS`].
pub fn cosine_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    reduce::mean_all(&cosine_rows(a, b)?)
}

/// Gradients of [`cosine_loss`] with respect to both inputs, `dy` the `[1]` output gradient.
pub fn cosine_loss_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "cosine_loss";
    let (backend, rows, cols) = rows_cols(op, a, b)?;
    check_dy(op, &[a], dy)?;
    let scale = 1.0 / rows.max(1) as f32;
    let da = Tensor::uninit(&backend, a.shape(), DType::F32)?;
    let db = Tensor::uninit(&backend, a.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::cos_backward(
            &a.cpu_read()?,
            &b.cpu_read()?,
            cpu_scalar(dy)? * scale,
            &mut da.cpu_write()?,
            &mut db.cpu_write()?,
            cols,
        ),
        Backend::Gpu(gpu) => {
            let params = Params {
                scale,
                ..Params::new(op, rows, cols, a.numel())?
            };
            gpu.dispatch(
                Kernel::f32("distill", "cos_bwd"),
                bytemuck::bytes_of(&params),
                &[
                    a.bind(1)?,
                    b.bind(2)?,
                    dy.bind(3)?,
                    da.bind(4)?,
                    db.bind(5)?,
                ],
                groups_for(rows),
            )?;
        }
    }
    Ok((da, db))
}

/// The CPU reference (f64 internally). Row slices hold whole rows of `cols > 0` elements.
pub(crate) mod cpu {
    use super::COSINE_EPS;

    /// log-softmax of `row / t`.
    fn log_softmax(row: &[f32], t: f64) -> Vec<f64> {
        let z: Vec<f64> = row.iter().map(|&v| v as f64 / t).collect();
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let ln = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        z.iter().map(|v| v - ln).collect()
    }

    pub(crate) fn kl_rows(s: &[f32], t: &[f32], temp: f32, out: &mut [f32], cols: usize) {
        let temp = temp as f64;
        for ((sr, tr), o) in s
            .chunks_exact(cols)
            .zip(t.chunks_exact(cols))
            .zip(out.iter_mut())
        {
            let (lq, lp) = (log_softmax(sr, temp), log_softmax(tr, temp));
            let kl: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
            *o = (temp * temp * kl) as f32;
        }
    }

    /// `ds = g (q - p)` with `g` the whole scale `dy T / N`.
    pub(crate) fn kl_backward(
        s: &[f32],
        t: &[f32],
        temp: f32,
        g: f32,
        ds: &mut [f32],
        cols: usize,
    ) {
        let rows = s.chunks_exact(cols).zip(t.chunks_exact(cols));
        for ((sr, tr), o) in rows.zip(ds.chunks_exact_mut(cols)) {
            let (lq, lp) = (log_softmax(sr, temp as f64), log_softmax(tr, temp as f64));
            for ((o, q), p) in o.iter_mut().zip(lq).zip(lp) {
                *o = (g as f64 * (q.exp() - p.exp())) as f32;
            }
        }
    }

    pub(crate) fn mse(a: &[f32], b: &[f32], out: &mut [f32]) {
        let s: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        for o in out.iter_mut() {
            *o = (s / a.len().max(1) as f64) as f32;
        }
    }

    /// `da = g (a - b)`, `db = -da`, with `g` the whole scale `2 dy / n`.
    pub(crate) fn mse_backward(a: &[f32], b: &[f32], g: f32, da: &mut [f32], db: &mut [f32]) {
        for (((&x, &y), p), q) in a.iter().zip(b).zip(da.iter_mut()).zip(db.iter_mut()) {
            let d = g as f64 * (x as f64 - y as f64);
            *p = d as f32;
            *q = -d as f32;
        }
    }

    /// `(a.b, na, nb, |a| > eps, |b| > eps)` of one row pair, norms floored at eps.
    fn cos_parts(a: &[f32], b: &[f32]) -> (f64, f64, f64, bool, bool) {
        let eps = COSINE_EPS as f64;
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let ra = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let rb = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
        (dot, ra.max(eps), rb.max(eps), ra > eps, rb > eps)
    }

    pub(crate) fn cos_rows(a: &[f32], b: &[f32], out: &mut [f32], cols: usize) {
        for ((ar, br), o) in a
            .chunks_exact(cols)
            .zip(b.chunks_exact(cols))
            .zip(out.iter_mut())
        {
            let (dot, na, nb, _, _) = cos_parts(ar, br);
            *o = (1.0 - dot / (na * nb)) as f32;
        }
    }

    /// Gradients of the mean of `1 - cos`, with `g` the whole scale `dy / N`.
    pub(crate) fn cos_backward(
        a: &[f32],
        b: &[f32],
        g: f32,
        da: &mut [f32],
        db: &mut [f32],
        cols: usize,
    ) {
        let rows = a.chunks_exact(cols).zip(b.chunks_exact(cols));
        let outs = da.chunks_exact_mut(cols).zip(db.chunks_exact_mut(cols));
        for ((ar, br), (dar, dbr)) in rows.zip(outs) {
            let (dot, na, nb, ka, kb) = cos_parts(ar, br);
            let c = dot / (na * nb);
            let fa = if ka { c / (na * na) } else { 0.0 };
            let fb = if kb { c / (nb * nb) } else { 0.0 };
            let g = -(g as f64);
            for (((&x, &y), p), q) in ar.iter().zip(br).zip(dar.iter_mut()).zip(dbr.iter_mut()) {
                let (x, y) = (x as f64, y as f64);
                *p = (g * (y / (na * nb) - fa * x)) as f32;
                *q = (g * (x / (na * nb) - fb * y)) as f32;
            }
        }
    }
}

mod tape {
    use super::*;
    use crate::graph::{Graph, Var};

    impl Graph {
        /// Hinton's distillation loss `T^2 KL(softmax(teacher / T) || softmax(student / T))`,
        /// averaged over rows, `[1]`. `teacher` is treated as a constant: only `student`
        /// receives a gradient.
        pub fn kl_div_temperature(
            &mut self,
            student: Var,
            teacher: Var,
            temperature: f32,
        ) -> Result<Var> {
            let y = kl_div_temperature(self.value(student), self.value(teacher), temperature)?;
            Ok(self.record(y, &[student, teacher], move |i, _, dy| {
                Ok(vec![
                    Some(kl_div_temperature_backward(i[0], i[1], temperature, dy)?),
                    None,
                ])
            }))
        }

        /// Mean squared error `mean((a - b)^2)`, `[1]`; both inputs receive gradients.
        pub fn mse(&mut self, a: Var, b: Var) -> Result<Var> {
            let y = mse(self.value(a), self.value(b))?;
            Ok(self.record(y, &[a, b], |i, _, dy| {
                let (da, db) = mse_backward(i[0], i[1], dy)?;
                Ok(vec![Some(da), Some(db)])
            }))
        }

        /// Cosine-embedding loss `mean_r (1 - cos(a_r, b_r))` over rows of `[.., D]`, `[1]`;
        /// both inputs receive gradients.
        pub fn cosine_loss(&mut self, a: Var, b: Var) -> Result<Var> {
            let y = cosine_loss(self.value(a), self.value(b))?;
            Ok(self.record(y, &[a, b], |i, _, dy| {
                let (da, db) = cosine_loss_backward(i[0], i[1], dy)?;
                Ok(vec![Some(da), Some(db)])
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::elementwise;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, random};

    /// Rows x columns: single elements, columns below, at and above one workgroup (columns
    /// split across threads), and more rows than threads in a workgroup.
    const SHAPES: [(usize, usize); 6] = [(1, 1), (7, 1), (7, 10), (33, 257), (5, 1000), (300, 3)];

    fn scalar_pair(v: f32) -> (Tensor, Tensor) {
        (
            Tensor::scalar(&Backend::Cpu, v).unwrap(),
            Tensor::scalar(&gpu(), v).unwrap(),
        )
    }

    fn scaled_pair(shape: &[usize], seed: u64, s: f32) -> (Tensor, Tensor) {
        let c = elementwise::scale(&pair(shape, seed).0, s).unwrap();
        let g = c.to_backend(&gpu()).unwrap();
        (c, g)
    }

    #[test]
    fn kl_gpu_matches_cpu() {
        let (dc, dg) = scalar_pair(0.7);
        for (i, &(n, c)) in SHAPES.iter().enumerate() {
            let (sc, sg) = scaled_pair(&[n, c], i as u64, 6.0);
            let (tc, tg) = scaled_pair(&[n, c], 20 + i as u64, 6.0);
            for temp in [0.5f32, 1.0, 4.0] {
                let what = format!("[{n}, {c}] T={temp}");
                // Each row's KL is a sum of p (log p - log q) over up to 1000 classes, the logs
                // carrying f32 rounding of logits up to 12 / T: 1e-4 relative + 1e-5 absolute.
                assert_close(
                    &format!("kl {what}"),
                    &kl_div_temperature(&sg, &tg, temp).unwrap(),
                    &kl_div_temperature(&sc, &tc, temp).unwrap(),
                    1e-4,
                    1e-5,
                );
                // Row by row as well, so one bad row cannot hide in the mean (same bound).
                assert_close(
                    &format!("kl rows {what}"),
                    &kl_rows(&sg, &tg, temp).unwrap(),
                    &kl_rows(&sc, &tc, temp).unwrap(),
                    1e-4,
                    1e-5,
                );
                // Differences of probabilities times T / N: absolute bound at the scale of
                // T * 1e-6 per probability, 1e-4 relative for the larger entries.
                let want = kl_div_temperature_backward(&sc, &tc, temp, &dc).unwrap();
                let got = kl_div_temperature_backward(&sg, &tg, temp, &dg).unwrap();
                assert_close(&format!("kl' {what}"), &got, &want, 1e-4, 1e-6 * temp);
            }
        }
    }

    #[test]
    fn kl_is_zero_for_equal_logits_and_positive_otherwise() {
        for b in [Backend::Cpu, gpu()] {
            let s = Tensor::from_slice(&b, &[3, 4], &random(12, 1, 3.0)).unwrap();
            let t = Tensor::from_slice(&b, &[3, 4], &random(12, 2, 3.0)).unwrap();
            assert!(
                kl_div_temperature(&s, &s, 2.0)
                    .unwrap()
                    .item()
                    .unwrap()
                    .abs()
                    < 1e-6
            );
            assert!(kl_div_temperature(&s, &t, 2.0).unwrap().item().unwrap() > 0.0);
        }
    }

    #[test]
    fn mse_gpu_matches_cpu() {
        let (dc, dg) = scalar_pair(1.3);
        // Element counts around the 4096-element chunk of the two-pass sum.
        for (i, shape) in [
            &[1usize][..],
            &[7],
            &[33, 7],
            &[3, 257],
            &[4096],
            &[5, 1000],
            &[70_001],
        ]
        .iter()
        .enumerate()
        {
            let (ac, ag) = pair(shape, i as u64);
            let (bc, bg) = pair(shape, 30 + i as u64);
            // f32 chunk sums of up to 4096 squares, then of 18 partials, vs f64: 1e-5
            // relative + 1e-7 absolute.
            assert_close(
                &format!("mse {shape:?}"),
                &mse(&ag, &bg).unwrap(),
                &mse(&ac, &bc).unwrap(),
                1e-5,
                1e-7,
            );
            let (dac, dbc) = mse_backward(&ac, &bc, &dc).unwrap();
            let (dag, dbg) = mse_backward(&ag, &bg, &dg).unwrap();
            // One subtraction and two products per element: a few ulp, 1e-6 relative + tiny
            // absolute (the values scale as 1/n).
            assert_close(&format!("mse da {shape:?}"), &dag, &dac, 1e-6, 1e-12);
            assert_close(&format!("mse db {shape:?}"), &dbg, &dbc, 1e-6, 1e-12);
        }
    }

    #[test]
    fn cosine_gpu_matches_cpu() {
        let (dc, dg) = scalar_pair(0.9);
        for (i, &(n, c)) in SHAPES.iter().enumerate() {
            let (ac, _) = pair(&[n, c], i as u64);
            let (bc, _) = pair(&[n, c], 40 + i as u64);
            // Zero rows in both operands (and both at once in row 0) exercise the eps floor.
            let mut av = ac.to_vec().unwrap();
            let mut bv = bc.to_vec().unwrap();
            av[..c].fill(0.0);
            bv[..c].fill(0.0);
            if n > 2 {
                av[2 * c..3 * c].fill(0.0);
            }
            let t = |b: &Backend, v: &[f32]| Tensor::from_slice(b, &[n, c], v).unwrap();
            let (ac, ag, bc, bg) = (
                t(&Backend::Cpu, &av),
                t(&gpu(), &av),
                t(&Backend::Cpu, &bv),
                t(&gpu(), &bv),
            );
            let what = format!("[{n}, {c}]");
            // Row dot products and norms of up to 1000 terms in f32: 1e-5 relative + 1e-6
            // absolute on a mean of values in [0, 2].
            assert_close(
                &format!("cos {what}"),
                &cosine_loss(&ag, &bg).unwrap(),
                &cosine_loss(&ac, &bc).unwrap(),
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("cos rows {what}"),
                &cosine_rows(&ag, &bg).unwrap(),
                &cosine_rows(&ac, &bc).unwrap(),
                1e-5,
                1e-6,
            );
            let (dac, dbc) = cosine_loss_backward(&ac, &bc, &dc).unwrap();
            let (dag, dbg) = cosine_loss_backward(&ag, &bg, &dg).unwrap();
            assert!(dag
                .to_vec()
                .unwrap()
                .iter()
                .chain(&dbg.to_vec().unwrap())
                .all(|v| v.is_finite()));
            // b / (na nb) - c a / na^2 cancels partly; the entries are of order 1 / (N |a|),
            // and up to 1e8 / N where a norm is floored: 1e-4 relative + 1e-6 absolute.
            assert_close(&format!("cos da {what}"), &dag, &dac, 1e-4, 1e-6);
            assert_close(&format!("cos db {what}"), &dbg, &dbc, 1e-4, 1e-6);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let (n, c) = (4, 5);
        let t = |v: &[f32]| Tensor::from_slice(&cpu, &[n, c], v).unwrap();
        let av = random(n * c, 1, 2.0);
        let bv = random(n * c, 2, 2.0);
        let dy = Tensor::scalar(&cpu, 0.8).unwrap();
        let value = |x: Tensor| 0.8 * x.item().unwrap() as f64;
        for temp in [0.7f32, 1.0, 3.0] {
            let ds = kl_div_temperature_backward(&t(&av), &t(&bv), temp, &dy).unwrap();
            check_gradient(
                &format!("kl T={temp}"),
                &av,
                &ds.to_vec().unwrap(),
                |s| value(kl_div_temperature(&t(s), &t(&bv), temp).unwrap()),
                1e-2,
            );
        }
        let (da, db) = mse_backward(&t(&av), &t(&bv), &dy).unwrap();
        check_gradient(
            "mse da",
            &av,
            &da.to_vec().unwrap(),
            |a| value(mse(&t(a), &t(&bv)).unwrap()),
            1e-2,
        );
        check_gradient(
            "mse db",
            &bv,
            &db.to_vec().unwrap(),
            |b| value(mse(&t(&av), &t(b)).unwrap()),
            1e-2,
        );
        let (da, db) = cosine_loss_backward(&t(&av), &t(&bv), &dy).unwrap();
        check_gradient(
            "cos da",
            &av,
            &da.to_vec().unwrap(),
            |a| value(cosine_loss(&t(a), &t(&bv)).unwrap()),
            1e-2,
        );
        check_gradient(
            "cos db",
            &bv,
            &db.to_vec().unwrap(),
            |b| value(cosine_loss(&t(&av), &t(b)).unwrap()),
            1e-2,
        );
    }

    /// `kl(s, t, 2) + mse(s, u) + cosine(s, u)` on the tape, gradients to s and u (t is the
    /// constant teacher): CPU gradients match finite differences, the GPU tape the CPU tape.
    #[test]
    fn graph_methods_on_both_backends() {
        let (n, c) = (3, 6);
        let sv = random(n * c, 3, 2.0);
        let tv = random(n * c, 4, 2.0);
        let uv = random(n * c, 5, 2.0);
        let run = |b: &Backend, s: &[f32], u: &[f32]| {
            let mut g = Graph::new(b);
            let mk = |v: &[f32]| Tensor::from_slice(b, &[n, c], v).unwrap();
            let s = g.input_with_grad(mk(s));
            let t = g.input(mk(&tv));
            let u = g.input_with_grad(mk(u));
            let k = g.kl_div_temperature(s, t, 2.0).unwrap();
            let m = g.mse(s, u).unwrap();
            let cs = g.cosine_loss(s, u).unwrap();
            let l = g.add(k, m).unwrap();
            let l = g.add(l, cs).unwrap();
            let value = g.value(l).item().unwrap();
            let grads = g.backward(l).unwrap();
            (
                value,
                grads.get(s).unwrap().clone(),
                grads.get(u).unwrap().clone(),
            )
        };
        let (vc, dsc, duc) = run(&Backend::Cpu, &sv, &uv);
        let (vg, dsg, dug) = run(&gpu(), &sv, &uv);
        // Sums of 18 terms of order 1: 1e-5 relative + 1e-5 absolute.
        assert!((vc - vg).abs() <= 1e-5 + 1e-5 * vc.abs(), "{vc} vs {vg}");
        assert_close("tape ds", &dsg, &dsc, 1e-5, 1e-5);
        assert_close("tape du", &dug, &duc, 1e-5, 1e-5);
        check_gradient(
            "tape ds",
            &sv,
            &dsc.to_vec().unwrap(),
            |s| run(&Backend::Cpu, s, &uv).0 as f64,
            1e-2,
        );
        check_gradient(
            "tape du",
            &uv,
            &duc.to_vec().unwrap(),
            |u| run(&Backend::Cpu, &sv, u).0 as f64,
            1e-2,
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        for b in [Backend::Cpu, gpu()] {
            let x = Tensor::zeros(&b, &[2, 3]).unwrap();
            let y = Tensor::zeros(&b, &[3, 2]).unwrap();
            let one = Tensor::scalar(&b, 1.0).unwrap();
            let two = Tensor::zeros(&b, &[2]).unwrap();
            let shape_err = |r: Result<()>| matches!(r, Err(Error::Shape { .. }));
            assert!(shape_err(kl_div_temperature(&x, &y, 1.0).map(drop)));
            assert!(shape_err(
                kl_div_temperature_backward(&x, &y, 1.0, &one).map(drop)
            ));
            assert!(shape_err(
                kl_div_temperature_backward(&x, &x, 1.0, &two).map(drop)
            ));
            assert!(shape_err(mse(&x, &y).map(drop)));
            assert!(shape_err(mse_backward(&x, &x, &two).map(drop)));
            assert!(shape_err(cosine_loss(&x, &y).map(drop)));
            assert!(shape_err(cosine_loss_backward(&x, &x, &two).map(drop)));
            let empty = Tensor::zeros(&b, &[2, 0]).unwrap();
            assert!(shape_err(cosine_loss(&empty, &empty).map(drop)));
            assert!(matches!(
                kl_div_temperature(&x, &x, 0.0),
                Err(Error::Invalid(_))
            ));
            assert!(matches!(
                kl_div_temperature(&x, &x, f32::NAN),
                Err(Error::Invalid(_))
            ));
        }
        let rank0 = Tensor::from_slice(&Backend::Cpu, &[], &[1.0]).unwrap();
        assert!(matches!(
            kl_div_temperature(&rank0, &rank0, 1.0),
            Err(Error::Shape { .. })
        ));
        // MSE of two rank-0 tensors is defined (one element).
        assert_eq!(mse(&rank0, &rank0).unwrap().item().unwrap(), 0.0);
    }
}
