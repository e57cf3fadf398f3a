//! Matrix multiplication: `C = op(A) op(B)`, batched, with either operand transposed.
//!
//! Shape key: op(A) is `M x K`, op(B) is `K x N`, C is `M x N`; leading dims are a batch.
//! Supported operand ranks: both 2-D; A n-D with B 2-D (A's leading dims fold into M, A
//! untransposed); both n-D with equal batch dims.
//! Backward (dC given):
//!   d op(A) = dC op(B)^T,  d op(B) = op(A)^T dC  — written below with transpose flags.

use bytemuck::{Pod, Zeroable};

use super::{common_backend, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Resolved sizes of one matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub(crate) batch: usize,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
}

fn dims(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<(Dims, Vec<usize>)> {
    let bad = || {
        Error::shape(
            "matmul",
            format!(
                "A {a:?}{} x B {b:?}{}",
                if ta { "^T" } else { "" },
                if tb { "^T" } else { "" }
            ),
        )
    };
    if a.len() < 2 || b.len() < 2 {
        return Err(bad());
    }
    let (ar, ac) = (a[a.len() - 2], a[a.len() - 1]);
    let (br, bc) = (b[b.len() - 2], b[b.len() - 1]);
    let (m, ka) = if ta { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if tb { (bc, br) } else { (br, bc) };
    if ka != kb {
        return Err(bad());
    }
    let a_lead: usize = a[..a.len() - 2].iter().product();
    let mut out = a[..a.len() - 2].to_vec();
    let d = if b.len() == 2 {
        if ta && a.len() > 2 {
            return Err(bad());
        }
        // Fold A's leading dims into M.
        Dims {
            batch: 1,
            m: m * a_lead,
            k: ka,
            n,
        }
    } else if a[..a.len() - 2] == b[..b.len() - 2] {
        Dims {
            batch: a_lead,
            m,
            k: ka,
            n,
        }
    } else {
        return Err(bad());
    };
    out.extend([m, n]);
    Ok((d, out))
}

/// `C = op(A) op(B)` where op transposes when `ta`/`tb` is set.
pub fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let backend = common_backend("matmul", &[a, b])?;
    let (d, out_shape) = dims(a.shape(), b.shape(), ta, tb)?;
    let c = Tensor::uninit(&backend, &out_shape, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::matmul(
            &a.cpu_read()?,
            &b.cpu_read()?,
            &mut c.cpu_write()?,
            d,
            ta,
            tb,
        ),
        Backend::Gpu(_) => gpu_matmul(a, b, &c, d, ta, tb, Config::choose(d))?,
    }
    Ok(c)
}

/// The GPU matmul kernels (entry points of `shaders/matmul.wgsl`); each computes the same
/// product, and [`Config::choose`] picks one per shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// 64 x 64 tiles of C, 4 x 4 outputs per thread: small and thin products.
    Tile64,
    /// 128 x 128 tiles of C, 8 x 8 outputs per thread, double-buffered K steps.
    Wide128,
}

impl Config {
    /// Every configuration, for tests and tuning.
    pub const ALL: [Config; 2] = [Config::Tile64, Config::Wide128];

    /// `PUPIL_MATMUL` (`tile64` or `wide128`) when set, else the large tiles where the
    /// product fills them (both sides at least 128) and the small ones otherwise.
    pub(crate) fn choose(d: Dims) -> Config {
        static FORCED: std::sync::OnceLock<Option<Config>> = std::sync::OnceLock::new();
        let forced = FORCED.get_or_init(|| {
            let name = std::env::var("PUPIL_MATMUL").ok()?;
            Config::ALL.into_iter().find(|c| c.name() == name)
        });
        forced.unwrap_or(if d.m >= 128 && d.n >= 128 {
            Config::Wide128
        } else {
            Config::Tile64
        })
    }

    /// The name `PUPIL_MATMUL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Config::Tile64 => "tile64",
            Config::Wide128 => "wide128",
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Config::Tile64 => "matmul",
            Config::Wide128 => "matmul_wide",
        }
    }

    /// Rows and columns of C one workgroup computes.
    fn tile(self) -> usize {
        match self {
            Config::Tile64 => 64,
            Config::Wide128 => 128,
        }
    }
}

/// `C = A B`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, b, false, false)
}

/// Gradients of `C = op(A) op(B)` with respect to A and B, given dC.
pub fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    dc: &Tensor,
) -> Result<(Tensor, Tensor)> {
    // With B 2-D and A batched, A folds to (lead*M) x K, so work on the folded views.
    let (a2, dc2) = if b.shape().len() == 2 && a.shape().len() > 2 {
        let k = a.shape()[a.shape().len() - 1];
        let n = dc.shape()[dc.shape().len() - 1];
        (
            a.reshape(&[a.numel() / k, k])?,
            dc.reshape(&[dc.numel() / n, n])?,
        )
    } else {
        (a.clone(), dc.clone())
    };
    let da = if ta {
        matmul_t(b, &dc2, tb, true)?
    } else {
        matmul_t(&dc2, b, false, !tb)?
    };
    let db = if tb {
        matmul_t(&dc2, &a2, true, ta)?
    } else {
        matmul_t(&a2, &dc2, !ta, false)?
    };
    Ok((da.reshape(a.shape())?, db))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ta: u32,
    tb: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    _pad: [u32; 4],
}

fn gpu_matmul(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: Dims,
    ta: bool,
    tb: bool,
    config: Config,
) -> Result<()> {
    let gpu = a.gpu_buffer()?.gpu().clone();
    if a.dtype() != b.dtype() {
        return Err(Error::NotSupported {
            op: "matmul",
            detail: format!("mixed operand dtypes {:?} and {:?}", a.dtype(), b.dtype()),
        });
    }
    u32_len("matmul", a.numel().max(b.numel()).max(c.numel()))?;
    let batched = d.batch > 1;
    let params = Params {
        m: d.m as u32,
        n: d.n as u32,
        k: d.k as u32,
        ta: ta as u32,
        tb: tb as u32,
        stride_a: if batched { (d.m * d.k) as u32 } else { 0 },
        stride_b: if batched { (d.k * d.n) as u32 } else { 0 },
        stride_c: (d.m * d.n) as u32,
        _pad: [0; 4],
    };
    let kernel = Kernel {
        shader: "matmul",
        entry: config.entry(),
        dtype: Some(a.dtype()),
    };
    let tile = config.tile();
    let groups = [
        d.n.div_ceil(tile) as u32,
        d.m.div_ceil(tile) as u32,
        d.batch as u32,
    ];
    gpu.dispatch(
        kernel,
        bytemuck::bytes_of(&params),
        &[a.bind(1)?, b.bind(2)?, c.bind(3)?],
        groups,
    )
}

/// The CPU reference: a strided SGEMM per batch entry, so either operand may be transposed
/// in place.
pub(crate) mod cpu {
    use super::Dims;

    pub(crate) fn matmul(a: &[f32], b: &[f32], c: &mut [f32], d: Dims, ta: bool, tb: bool) {
        let Dims { batch, m, k, n, .. } = d;
        // Element strides (row, column) of op(A) (M x K) and op(B) (K x N) as stored.
        let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
        let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
        for bi in 0..batch {
            let a = &a[bi * m * k..(bi + 1) * m * k];
            let b = &b[bi * k * n..(bi + 1) * k * n];
            let c = &mut c[bi * m * n..(bi + 1) * m * n];
            gemm(a, (rsa, csa), b, (rsb, csb), c, [m, k, n], 0.0);
        }
    }

    /// `C = A B + beta C` for `A` `M x K` and `B` `K x N` read through (row, column) element
    /// strides, `C` `M x N` row-major.
    ///
    /// # Panics
    /// When a slice is too short for its shape and strides (a bug in the caller).
    pub(crate) fn gemm(
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        c: &mut [f32],
        [m, k, n]: [usize; 3],
        beta: f32,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c[..m * n].iter_mut().for_each(|v| *v *= beta);
            return;
        }
        let last =
            |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
        assert!(last(m, k, rsa, csa) < a.len(), "gemm: A too short");
        assert!(last(k, n, rsb, csb) < b.len(), "gemm: B too short");
        assert!(m * n <= c.len(), "gemm: C too short");
        // SAFETY: the asserts above keep every element matrixmultiply touches in bounds.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    /// The product on the GPU with one kernel configuration.
    fn matmul_with(config: Config, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Tensor {
        let (d, shape) = dims(a.shape(), b.shape(), ta, tb).unwrap();
        let c = Tensor::uninit(&gpu(), &shape, DType::F32).unwrap();
        gpu_matmul(a, b, &c, d, ta, tb, config).unwrap();
        c
    }

    /// Every configuration agrees with the CPU to 1e-4 relative (f32 sums of up to 257
    /// products in another order), every transpose, shapes off every tile edge, batched.
    #[test]
    fn gpu_matches_cpu_on_awkward_shapes() {
        let mut seed = 0;
        for &(batch, m, k, n) in &[
            (1, 1, 1, 1),
            (1, 7, 33, 5),
            (1, 33, 7, 65),
            (1, 64, 64, 64),
            (1, 65, 257, 31),
            (1, 130, 17, 129),
            (1, 257, 9, 200),
            (3, 129, 33, 131),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                seed += 1;
                let ash = if ta { [batch, k, m] } else { [batch, m, k] };
                let bsh = if tb { [batch, n, k] } else { [batch, k, n] };
                let (ac, ag) = pair(&ash, seed);
                let (bc, bg) = pair(&bsh, seed + 100);
                let want = matmul_t(&ac, &bc, ta, tb).unwrap();
                for config in Config::ALL {
                    assert_close(
                        &format!("{config:?} {batch}x{m}x{k}x{n} ta={ta} tb={tb}"),
                        &matmul_with(config, &ag, &bg, ta, tb),
                        &want,
                        1e-4,
                        1e-5,
                    );
                }
            }
        }
    }

    #[test]
    fn batched_and_folded_shapes() {
        let (ac, ag) = pair(&[3, 17, 9], 1);
        let (bc, bg) = pair(&[3, 9, 70], 2);
        assert_close(
            "batched",
            &matmul(&ag, &bg).unwrap(),
            &matmul(&ac, &bc).unwrap(),
            1e-4,
            1e-5,
        );
        let (wc, wg) = pair(&[9, 5], 3);
        let folded = matmul(&ag, &wg).unwrap();
        assert_eq!(folded.shape(), &[3, 17, 5]);
        assert_close("folded", &folded, &matmul(&ac, &wc).unwrap(), 1e-4, 1e-5);
        let (qc, qg) = pair(&[2, 3, 6, 4], 4);
        let (kc, kg) = pair(&[2, 3, 7, 4], 5);
        assert_close(
            "attention scores",
            &matmul_t(&qg, &kg, false, true).unwrap(),
            &matmul_t(&qc, &kc, false, true).unwrap(),
            1e-4,
            1e-5,
        );
        assert!(
            matmul(&ag, &pair(&[2, 9, 70], 6).1).is_err(),
            "batch mismatch must fail"
        );
        assert!(
            matmul(&ag, &pair(&[8, 5], 7).1).is_err(),
            "K mismatch must fail"
        );
    }

    #[test]
    fn f16_storage_matches_f32_within_half_precision() {
        let b = gpu();
        if !b.gpu().unwrap().capabilities().shader_f16 {
            eprintln!("adapter lacks SHADER_F16: checking the f32 fallback instead");
            let x = Tensor::from_slice_f16(&b, &[4, 4], &random(16, 1, 1.0)).unwrap();
            assert_eq!(x.dtype(), DType::F32);
            return;
        }
        let (m, k, n) = (133, 65, 257);
        let av = random(m * k, 1, 1.0);
        let bv = random(k * n, 2, 1.0);
        let a16 = Tensor::from_slice_f16(&b, &[m, k], &av).unwrap();
        let b16 = Tensor::from_slice_f16(&b, &[k, n], &bv).unwrap();
        let want = matmul(
            &Tensor::from_slice(&Backend::Cpu, &[m, k], &av).unwrap(),
            &Tensor::from_slice(&Backend::Cpu, &[k, n], &bv).unwrap(),
        )
        .unwrap();
        // Inputs rounded to 11-bit mantissas: relative error per product ~1e-3, sums of 65.
        for config in Config::ALL {
            assert_close(
                &format!("f16 matmul {config:?}"),
                &matmul_with(config, &a16, &b16, false, false),
                &want,
                1e-2,
                2e-2,
            );
        }
    }

    /// Backward against finite differences on the CPU reference, every transpose combination.
    #[test]
    fn backward_matches_finite_differences() {
        let (m, k, n) = (3, 4, 5);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ash = if ta { [k, m] } else { [m, k] };
            let bsh = if tb { [n, k] } else { [k, n] };
            let av = random(m * k, 1, 1.0);
            let bv = random(k * n, 2, 1.0);
            let w = random(m * n, 3, 1.0);
            let cpu = Backend::Cpu;
            let a = Tensor::from_slice(&cpu, &ash, &av).unwrap();
            let b = Tensor::from_slice(&cpu, &bsh, &bv).unwrap();
            let dc = Tensor::from_slice(&cpu, &[m, n], &w).unwrap();
            let (da, db) = matmul_backward(&a, &b, ta, tb, &dc).unwrap();
            let loss_a = |x: &[f32]| {
                probe(
                    &matmul_t(&Tensor::from_slice(&cpu, &ash, x).unwrap(), &b, ta, tb)
                        .unwrap()
                        .to_vec()
                        .unwrap(),
                    &w,
                )
            };
            check_gradient("dA", &av, &da.to_vec().unwrap(), loss_a, 1e-2);
            let loss_b = |x: &[f32]| {
                probe(
                    &matmul_t(&a, &Tensor::from_slice(&cpu, &bsh, x).unwrap(), ta, tb)
                        .unwrap()
                        .to_vec()
                        .unwrap(),
                    &w,
                )
            };
            check_gradient("dB", &bv, &db.to_vec().unwrap(), loss_b, 1e-2);
            // The GPU backward agrees with the CPU backward.
            let g = gpu();
            let (dag, dbg) = matmul_backward(
                &a.to_backend(&g).unwrap(),
                &b.to_backend(&g).unwrap(),
                ta,
                tb,
                &dc.to_backend(&g).unwrap(),
            )
            .unwrap();
            assert_close("dA gpu", &dag, &da, 1e-4, 1e-5);
            assert_close("dB gpu", &dbg, &db, 1e-4, 1e-5);
        }
    }
}
