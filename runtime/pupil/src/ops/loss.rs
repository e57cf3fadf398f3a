//! Losses. Cross-entropy from logits: mean over rows of `logsumexp(z) - z[y]`.
//!
//! Shape key: logits `[N, C]` (leading dims fold into N), labels `[N]` as f32 integers; a
//! label outside `[0, C)` marks an ignored row (loss 0, gradient 0), still counted in the mean.
//! Backward: `dz = dy / N * (softmax(z) - onehot(y))`.

use bytemuck::{Pod, Zeroable};

use super::{common_backend, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

fn rows_cols(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let c = *logits
        .shape()
        .last()
        .ok_or_else(|| Error::shape("cross_entropy", "rank-0 logits"))?;
    let n = logits.numel() / c.max(1);
    if labels.numel() != n {
        return Err(Error::shape(
            "cross_entropy",
            format!(
                "logits {:?} need {n} labels, got {:?}",
                logits.shape(),
                labels.shape()
            ),
        ));
    }
    Ok((n, c))
}

/// Per-row cross-entropy `[N]`.
pub fn cross_entropy_rows(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let backend = common_backend("cross_entropy", &[logits, labels])?;
    require_f32("cross_entropy", &[logits, labels])?;
    let (n, c) = rows_cols(logits, labels)?;
    let out = Tensor::uninit(&backend, &[n], DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::forward(
            &logits.cpu_read()?,
            &labels.cpu_read()?,
            &mut out.cpu_write()?,
            c,
        ),
        Backend::Gpu(gpu) => {
            let params = Params {
                rows: u32_len("cross_entropy", n)?,
                cols: u32_len("cross_entropy", c)?,
                scale: 1.0,
                _pad: 0,
            };
            gpu.dispatch(
                Kernel::f32("loss", "cross_entropy_fwd"),
                bytemuck::bytes_of(&params),
                &[logits.bind(1)?, labels.bind(2)?, out.bind(3)?],
                groups_for(n),
            )?;
        }
    }
    Ok(out)
}

/// Mean cross-entropy over rows, shape `[1]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    super::reduce::mean_all(&cross_entropy_rows(logits, labels)?)
}

/// Gradient of the mean cross-entropy with respect to the logits, `dy` the `[1]` output
/// gradient (read on the device: no synchronisation).
pub fn cross_entropy_backward(logits: &Tensor, labels: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let backend = common_backend("cross_entropy", &[logits, labels, dy])?;
    let (n, c) = rows_cols(logits, labels)?;
    let out = Tensor::uninit(&backend, logits.shape(), DType::F32)?;
    let scale = 1.0 / n.max(1) as f32;
    match &backend {
        Backend::Cpu => cpu::backward(
            &logits.cpu_read()?,
            &labels.cpu_read()?,
            dy.cpu_read()?[0] * scale,
            &mut out.cpu_write()?,
            c,
        ),
        Backend::Gpu(gpu) => {
            let params = Params {
                rows: u32_len("cross_entropy", n)?,
                cols: u32_len("cross_entropy", c)?,
                scale,
                _pad: 0,
            };
            gpu.dispatch(
                Kernel::f32("loss", "cross_entropy_bwd"),
                bytemuck::bytes_of(&params),
                &[logits.bind(1)?, labels.bind(2)?, out.bind(3)?, dy.bind(4)?],
                groups_for(n),
            )?;
        }
    }
    Ok(out)
}

/// The CPU reference (f64 internally).
pub(crate) mod cpu {
    fn label(y: f32, c: usize) -> Option<usize> {
        (y >= 0.0 && (y as usize) < c).then_some(y as usize)
    }

    fn log_softmax_parts(z: &[f32]) -> (f64, f64) {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let s: f64 = z.iter().map(|&v| (v as f64 - m).exp()).sum();
        (m, s)
    }

    pub(crate) fn forward(z: &[f32], y: &[f32], out: &mut [f32], c: usize) {
        for (r, o) in out.iter_mut().enumerate() {
            let row = &z[r * c..(r + 1) * c];
            let (m, s) = log_softmax_parts(row);
            *o = label(y[r], c).map_or(0.0, |t| (s.ln() + m - row[t] as f64) as f32);
        }
    }

    pub(crate) fn backward(z: &[f32], y: &[f32], g: f32, out: &mut [f32], c: usize) {
        for r in 0..y.len() {
            let row = &z[r * c..(r + 1) * c];
            let (m, s) = log_softmax_parts(row);
            let t = label(y[r], c);
            for j in 0..c {
                out[r * c + j] = match t {
                    None => 0.0,
                    Some(t) => {
                        (g as f64 * ((row[j] as f64 - m).exp() / s - f64::from(u8::from(j == t))))
                            as f32
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, random};

    fn labels(n: usize, c: usize, seed: u64) -> Vec<f32> {
        random(n, seed, 1.0)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i == 3 {
                    -1.0
                } else {
                    ((v + 1.0) * 0.5 * c as f32).floor().min(c as f32 - 1.0)
                }
            })
            .collect()
    }

    #[test]
    fn gpu_matches_cpu() {
        for (i, &(n, c)) in [(1usize, 1usize), (7, 10), (33, 257), (5, 1000), (300, 3)]
            .iter()
            .enumerate()
        {
            let (zc, zg) = pair(&[n, c], i as u64);
            let zc = crate::ops::elementwise::scale(&zc, 5.0).unwrap();
            let zg = zc.to_backend(&zg.backend()).unwrap();
            let y = labels(n, c, 10 + i as u64);
            let yc = Tensor::from_slice(&Backend::Cpu, &[n], &y).unwrap();
            let yg = Tensor::from_slice(&gpu(), &[n], &y).unwrap();
            // f32 exp/log sums over up to 1000 classes: 1e-5 relative, 1e-5 absolute.
            assert_close(
                "ce rows",
                &cross_entropy_rows(&zg, &yg).unwrap(),
                &cross_entropy_rows(&zc, &yc).unwrap(),
                1e-5,
                1e-5,
            );
            let dy = [0.7f32];
            let dc = cross_entropy_backward(
                &zc,
                &yc,
                &Tensor::from_slice(&Backend::Cpu, &[1], &dy).unwrap(),
            )
            .unwrap();
            let dg =
                cross_entropy_backward(&zg, &yg, &Tensor::from_slice(&gpu(), &[1], &dy).unwrap())
                    .unwrap();
            assert_close("ce grad", &dg, &dc, 1e-4, 1e-7);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let (n, c) = (4, 5);
        let zv = random(n * c, 1, 2.0);
        let y = Tensor::from_slice(&cpu, &[n], &labels(n, c, 2)).unwrap();
        let one = Tensor::scalar(&cpu, 1.0).unwrap();
        let dz = cross_entropy_backward(&Tensor::from_slice(&cpu, &[n, c], &zv).unwrap(), &y, &one)
            .unwrap();
        let loss = |v: &[f32]| {
            cross_entropy(&Tensor::from_slice(&cpu, &[n, c], v).unwrap(), &y)
                .unwrap()
                .item()
                .unwrap() as f64
        };
        check_gradient("cross_entropy", &zv, &dz.to_vec().unwrap(), loss, 1e-2);
    }

    #[test]
    fn wrong_label_count_is_refused() {
        let (z, _) = pair(&[4, 3], 1);
        let y = Tensor::from_slice(&Backend::Cpu, &[3], &[0.0, 1.0, 2.0]).unwrap();
        assert!(matches!(cross_entropy(&z, &y), Err(Error::Shape { .. })));
    }
}
