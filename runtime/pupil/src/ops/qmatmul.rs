//! Products with frozen block-quantized matrices (GGML's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the
//! k-quants Q4_K, Q5_K, Q6_K), which stay quantized in memory and are dequantized block by
//! block where they are used.
//!
//! Shape key: W `[R, C]` quantized in blocks along C: 32 elements (C a multiple of 32), or
//! super-blocks of 256 for the k-quants (C a multiple of 256).
//!   [`qmatmul`]:  `y = x W^T`, x `[.., C]` -> y `[.., R]` (a linear layer without bias);
//!   [`qmatmul_backward`]: `dx = dy W`, dy `[.., R]` -> dx `[.., C]` (W is frozen: no dW);
//!   [`qembedding`]: `y[.., :] = W[ids[..], :]` -> `[.., C]` (no gradient at all).
//! On the GPU a block is `words_per_block` u32 words (for 32-element blocks a scale header
//! word, then the quant bytes as GGML lays them out; a k-quant super-block is its GGML bytes
//! as they are, padded to whole words), so a thread reads whole words and unpacks them in
//! registers, 8 elements at a time; the
//! forward with at most four rows of x (decoding) runs a matrix-vector kernel. The CPU
//! reference dequantizes W in chunks of rows and multiplies with the CPU SGEMM.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::matmul::cpu::gemm;
use super::{groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::{Binding, GpuBuffer, Kernel};
use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::tensor::{DType, Tensor};

/// Elements per block of the 32-element formats, and per sub-block the kernels decode.
const BLOCK: usize = 32;
/// Rows of W the CPU path dequantizes at a time (bounds its scratch memory).
const CPU_CHUNK_ROWS: usize = 1024;
/// Rows of x up to which the GPU forward uses the matrix-vector kernel.
const MATVEC_ROWS: usize = 4;

/// A block quantization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // GGML's names
pub enum QFormat {
    /// Scale d (f16) and 32 signed bytes q: `d * q`.
    Q8_0,
    /// Scale d (f16) and 32 nibbles q: `d * (q - 8)`.
    Q4_0,
    /// Scale d and minimum m (f16) and 32 nibbles q: `d * q + m`.
    Q4_1,
    /// Scale d (f16), 32 fifth bits and 32 nibbles q: `d * (q - 16)`.
    Q5_0,
    /// Scale d and minimum m (f16), 32 fifth bits and 32 nibbles q: `d * q + m`.
    Q5_1,
    /// Super-blocks of 256: 4-bit q, 6-bit scale and minimum per 32.
    Q4_K,
    /// Super-blocks of 256: 5-bit q, 6-bit scale and minimum per 32.
    Q5_K,
    /// Super-blocks of 256: 6-bit q, i8 scale per 16.
    Q6_K,
}

impl QFormat {
    /// The format of a model-file dtype, if it is a block format.
    pub fn of(dtype: pupil_wire::DType) -> Option<QFormat> {
        match dtype {
            pupil_wire::DType::Q8_0 => Some(QFormat::Q8_0),
            pupil_wire::DType::Q4_0 => Some(QFormat::Q4_0),
            pupil_wire::DType::Q4_1 => Some(QFormat::Q4_1),
            pupil_wire::DType::Q5_0 => Some(QFormat::Q5_0),
            pupil_wire::DType::Q5_1 => Some(QFormat::Q5_1),
            pupil_wire::DType::Q4_K => Some(QFormat::Q4_K),
            pupil_wire::DType::Q5_K => Some(QFormat::Q5_K),
            pupil_wire::DType::Q6_K => Some(QFormat::Q6_K),
            _ => None,
        }
    }

    /// The model-file dtype of this format.
    pub fn dtype(self) -> pupil_wire::DType {
        match self {
            QFormat::Q8_0 => pupil_wire::DType::Q8_0,
            QFormat::Q4_0 => pupil_wire::DType::Q4_0,
            QFormat::Q4_1 => pupil_wire::DType::Q4_1,
            QFormat::Q5_0 => pupil_wire::DType::Q5_0,
            QFormat::Q5_1 => pupil_wire::DType::Q5_1,
            QFormat::Q4_K => pupil_wire::DType::Q4_K,
            QFormat::Q5_K => pupil_wire::DType::Q5_K,
            QFormat::Q6_K => pupil_wire::DType::Q6_K,
        }
    }

    /// Every format, in the shader's code order.
    pub const ALL: [QFormat; 8] = [
        QFormat::Q8_0,
        QFormat::Q4_0,
        QFormat::Q4_1,
        QFormat::Q5_0,
        QFormat::Q5_1,
        QFormat::Q4_K,
        QFormat::Q5_K,
        QFormat::Q6_K,
    ];

    /// Elements per block: 32, or 256 for a k-quant super-block.
    pub fn block_elems(self) -> usize {
        self.dtype().block_elems() as usize
    }

    /// Bytes of one block in GGML's layout (as stored in model files).
    pub fn block_bytes(self) -> usize {
        self.dtype().block_bytes() as usize
    }

    /// Whether this is a k-quant (kept in memory in its GGML layout, padded to words).
    fn is_k(self) -> bool {
        self.block_elems() > BLOCK
    }

    /// u32 words of one block in memory: a scale header word, then the quant bytes (32-element
    /// formats), or the GGML bytes padded to a whole word (k-quants).
    pub fn words_per_block(self) -> usize {
        if self.is_k() {
            self.block_bytes().div_ceil(4)
        } else {
            1 + (self.block_bytes() - self.header_bytes()) / 4
        }
    }

    /// Bytes in the file before the quants of a 32-element block (the f16 scale, and the
    /// minimum for Q4_1 and Q5_1).
    fn header_bytes(self) -> usize {
        match self {
            QFormat::Q4_1 | QFormat::Q5_1 => 4,
            _ => 2,
        }
    }

    /// The shader's `p.format`.
    fn code(self) -> u32 {
        Self::ALL.iter().position(|&f| f == self).unwrap_or(0) as u32
    }
}

/// Where the packed words live.
#[derive(Clone, Debug)]
enum Words {
    Cpu(Arc<Vec<u32>>),
    Gpu(Arc<GpuBuffer>),
}

/// A frozen `[rows, cols]` matrix kept in a block-quantized format on one backend.
#[derive(Clone, Debug)]
pub struct QMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    words: Words,
}

impl QMatrix {
    /// A matrix from GGML-layout block bytes (as a model file stores them).
    pub fn from_blocks(
        backend: &Backend,
        format: QFormat,
        [rows, cols]: [usize; 2],
        bytes: &[u8],
    ) -> Result<QMatrix> {
        let block = format.block_elems();
        let blocks = rows * cols / block;
        if cols % block != 0 || bytes.len() != blocks * format.block_bytes() {
            return Err(Error::shape(
                "quantized matrix",
                format!(
                    "{format:?} [{rows}, {cols}] needs a multiple of {block} columns and {} bytes, got {}",
                    blocks * format.block_bytes(),
                    bytes.len()
                ),
            ));
        }
        let mut words = Vec::with_capacity(blocks * format.words_per_block());
        for b in bytes.chunks_exact(format.block_bytes()) {
            let (head, quants) = match format.is_k() {
                true => (&[][..], b),
                false => b.split_at(format.header_bytes()),
            };
            if !head.is_empty() {
                let mut h = [0u8; 4];
                h[..head.len()].copy_from_slice(head);
                words.push(u32::from_le_bytes(h));
            }
            words.extend(quants.chunks(4).map(|q| {
                let mut w = [0u8; 4];
                w[..q.len()].copy_from_slice(q);
                u32::from_le_bytes(w)
            }));
        }
        let words = match backend {
            Backend::Cpu => Words::Cpu(Arc::new(words)),
            Backend::Gpu(gpu) => {
                let bytes: &[u8] = bytemuck::cast_slice(&words);
                let buf = gpu.alloc(bytes.len().max(4) as u64)?;
                gpu.upload(buf.raw(), 0, bytes)?;
                Words::Gpu(Arc::new(buf))
            }
        };
        Ok(QMatrix {
            format,
            rows,
            cols,
            words,
        })
    }

    /// Quantizes f32 `values` (`rows * cols`, row-major) to `format`.
    pub fn quantize(
        backend: &Backend,
        format: QFormat,
        [rows, cols]: [usize; 2],
        values: &[f32],
    ) -> Result<QMatrix> {
        let block = format.block_elems();
        if values.len() != rows * cols || cols % block != 0 {
            return Err(Error::shape(
                "quantize",
                format!(
                    "[{rows}, {cols}] (columns a multiple of {block}) from {} values",
                    values.len()
                ),
            ));
        }
        let bytes = crate::format::convert::from_f32(format.dtype(), values)
            .ok_or_else(|| Error::Invalid(format!("{format:?} is not a float format")))?;
        Self::from_blocks(backend, format, [rows, cols], &bytes)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The block format.
    pub fn format(&self) -> QFormat {
        self.format
    }

    /// Bytes the matrix occupies in memory.
    pub fn bytes(&self) -> u64 {
        (self.rows * self.cols / self.format.block_elems() * self.format.words_per_block() * 4)
            as u64
    }

    /// The backend it lives on.
    pub fn backend(&self) -> Backend {
        match &self.words {
            Words::Cpu(_) => Backend::Cpu,
            Words::Gpu(b) => Backend::Gpu(b.gpu().clone()),
        }
    }

    /// The dequantized values, row-major (reads a GPU matrix back).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let words = self.host_words()?;
        let mut out = vec![0.0; self.rows * self.cols];
        cpu::dequantize_rows(self.format, &words, self.cols, 0, &mut out);
        Ok(out)
    }

    fn host_words(&self) -> Result<Arc<Vec<u32>>> {
        match &self.words {
            Words::Cpu(w) => Ok(w.clone()),
            #[cfg(not(target_arch = "wasm32"))]
            Words::Gpu(b) => {
                let raw = b.gpu().read(b.raw(), 0, self.bytes())?;
                Ok(Arc::new(bytemuck::pod_collect_to_vec(&raw)))
            }
            #[cfg(target_arch = "wasm32")]
            Words::Gpu(_) => Err(Error::NotSupported {
                op: "dequantize",
                detail: "synchronous readback on the web".into(),
            }),
        }
    }

    fn bind(&self, slot: u32) -> Result<Binding<'_>> {
        match &self.words {
            Words::Gpu(b) => Ok(Binding {
                slot,
                buffer: b.raw(),
                offset: 0,
                size: self.bytes().max(4),
            }),
            Words::Cpu(_) => Err(Error::BackendMismatch {
                op: "quantized matmul",
            }),
        }
    }

    /// The backend shared with `t`, or a clear error.
    fn check_backend(&self, op: &'static str, t: &Tensor) -> Result<Backend> {
        match (&self.words, t.backend()) {
            (Words::Cpu(_), Backend::Cpu) => Ok(Backend::Cpu),
            (Words::Gpu(b), Backend::Gpu(g)) if Arc::ptr_eq(b.gpu(), &g) => Ok(Backend::Gpu(g)),
            _ => Err(Error::BackendMismatch { op }),
        }
    }

    fn params(&self, m: usize, n: usize, k: usize) -> Result<Params> {
        let op = "quantized matmul";
        u32_len(op, self.rows * self.cols)?;
        Ok(Params {
            m: u32_len(op, m)?,
            n: u32_len(op, n)?,
            k: u32_len(op, k)?,
            format: self.format.code(),
            rows: self.rows as u32,
            cols: self.cols as u32,
            wpb: self.format.words_per_block() as u32,
            _pad: 0,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    format: u32,
    rows: u32,
    cols: u32,
    wpb: u32,
    _pad: u32,
}

fn kernel(entry: &'static str) -> Kernel {
    Kernel {
        shader: "qmatmul",
        entry,
        dtype: None,
    }
}

/// `(rows of x, x's last dim)`, checking that the last dim is `want`.
fn rows_of(op: &'static str, x: &Tensor, want: usize) -> Result<usize> {
    match x.shape().last() {
        Some(&k) if k == want && x.shape().len() >= 2 => Ok(x.numel() / k),
        _ => Err(Error::shape(
            op,
            format!("x must be [.., {want}], got {:?}", x.shape()),
        )),
    }
}

/// `y = x W^T`: x `[.., C]` -> `[.., R]`.
pub fn qmatmul(x: &Tensor, w: &QMatrix) -> Result<Tensor> {
    let op = "quantized matmul";
    let backend = w.check_backend(op, x)?;
    require_f32(op, &[x])?;
    let m = rows_of(op, x, w.cols)?;
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.rows;
    }
    let y = Tensor::uninit(&backend, &shape, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::matmul_nt(
            w.format,
            &w.host_words()?,
            [w.rows, w.cols],
            &x.cpu_read()?,
            &mut y.cpu_write()?,
        ),
        Backend::Gpu(gpu) => {
            let p = w.params(m, w.rows, w.cols)?;
            let bindings = [x.bind(1)?, w.bind(2)?, y.bind(3)?];
            if m <= MATVEC_ROWS {
                gpu.dispatch(
                    kernel("qmatvec_nt"),
                    bytemuck::bytes_of(&p),
                    &bindings,
                    groups_for(w.rows),
                )?;
            } else {
                gpu.dispatch(
                    kernel("qmatmul_nt"),
                    bytemuck::bytes_of(&p),
                    &bindings,
                    [w.rows.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
                )?;
            }
        }
    }
    Ok(y)
}

/// The gradient of [`qmatmul`] with respect to x: `dx = dy W`, dy `[.., R]` -> `[.., C]`.
pub fn qmatmul_backward(w: &QMatrix, dy: &Tensor) -> Result<Tensor> {
    let op = "quantized matmul backward";
    let backend = w.check_backend(op, dy)?;
    require_f32(op, &[dy])?;
    let m = rows_of(op, dy, w.rows)?;
    let mut shape = dy.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.cols;
    }
    let dx = Tensor::uninit(&backend, &shape, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::matmul_nn(
            w.format,
            &w.host_words()?,
            [w.rows, w.cols],
            &dy.cpu_read()?,
            &mut dx.cpu_write()?,
        ),
        Backend::Gpu(gpu) => {
            let p = w.params(m, w.cols, w.rows)?;
            gpu.dispatch(
                kernel("qmatmul_nn"),
                bytemuck::bytes_of(&p),
                &[dy.bind(1)?, w.bind(2)?, dx.bind(3)?],
                [w.cols.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
            )?;
        }
    }
    Ok(dx)
}

/// Rows of W picked by `ids` (`[..]`, f32 integers in `[0, R)`): `[.., C]`. The CPU refuses
/// an id out of range; the GPU, which cannot report one without a readback, gives zeros.
pub fn qembedding(w: &QMatrix, ids: &Tensor) -> Result<Tensor> {
    let op = "quantized embedding";
    let backend = w.check_backend(op, ids)?;
    require_f32(op, &[ids])?;
    let mut shape = ids.shape().to_vec();
    shape.push(w.cols);
    let y = Tensor::uninit(&backend, &shape, DType::F32)?;
    match &backend {
        Backend::Cpu => {
            let words = w.host_words()?;
            let mut out = y.cpu_write()?;
            for (&id, row) in ids.cpu_read()?.iter().zip(out.chunks_exact_mut(w.cols)) {
                if id < 0.0 || id >= w.rows as f32 || id.fract() != 0.0 {
                    return Err(Error::Invalid(format!(
                        "token id {id} outside the table's {} rows",
                        w.rows
                    )));
                }
                cpu::dequantize_rows(w.format, &words, w.cols, id as usize, row);
            }
        }
        Backend::Gpu(gpu) => {
            let p = w.params(ids.numel(), w.cols, w.cols)?;
            gpu.dispatch(
                kernel("qembedding"),
                bytemuck::bytes_of(&p),
                &[ids.bind(1)?, w.bind(2)?, y.bind(3)?],
                super::grid(ids.numel() * w.cols / 8, 64),
            )?;
        }
    }
    Ok(y)
}

/// Graph ops with a frozen quantized matrix.
mod graph_ops {
    use super::*;

    impl Graph {
        /// `x W^T` with a frozen quantized `w` (`[R, C]`): `[.., C]` -> `[.., R]`; the
        /// gradient flows to x only.
        pub fn qmatmul(&mut self, x: Var, w: &QMatrix) -> Result<Var> {
            let y = qmatmul(self.value(x), w)?;
            let w = w.clone();
            Ok(self.record(y, &[x], move |_, _, dy| {
                Ok(vec![Some(qmatmul_backward(&w, dy)?)])
            }))
        }

        /// Rows of the frozen quantized `w` picked by `ids` (a constant).
        pub fn qembedding(&mut self, w: &QMatrix, ids: Var) -> Result<Var> {
            let y = qembedding(w, self.value(ids))?;
            Ok(self.input(y))
        }
    }
}

/// The CPU reference: block decoding, and products through the CPU SGEMM.
pub(crate) mod cpu {
    use super::*;
    use crate::format::convert::unpack_quants;

    /// Dequantizes consecutive rows from `first` into `out` (a whole number of rows).
    pub(crate) fn dequantize_rows(
        format: QFormat,
        words: &[u32],
        cols: usize,
        first: usize,
        out: &mut [f32],
    ) {
        let (wpb, block) = (format.words_per_block(), format.block_elems());
        let start = first * cols / block * wpb;
        for (words, o) in words[start..]
            .chunks_exact(wpb)
            .zip(out.chunks_exact_mut(block))
        {
            dequantize_block(format, words, o);
        }
    }

    /// One block of `words_per_block` words into `block_elems` values.
    pub(crate) fn dequantize_block(format: QFormat, block: &[u32], out: &mut [f32]) {
        if format.is_k() {
            let bytes: &[u8] = bytemuck::cast_slice(block);
            let bytes = &bytes[..format.block_bytes()];
            return crate::format::convert::decode_k_block(format.dtype(), bytes, out);
        }
        let d = f16::from_bits(block[0] as u16).to_f32();
        let mut bytes = [0u8; BLOCK];
        for (b, w) in bytes.chunks_exact_mut(4).zip(&block[1..]) {
            b.copy_from_slice(&w.to_le_bytes());
        }
        let quants = &bytes[..(block.len() - 1) * 4];
        let high = f16::from_bits((block[0] >> 16) as u16).to_f32();
        match format {
            QFormat::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(quants) {
                    *o = d * f32::from(q as i8);
                }
            }
            QFormat::Q4_0 | QFormat::Q4_1 => {
                let offset = if format == QFormat::Q4_1 {
                    high
                } else {
                    -8.0 * d
                };
                unpack_quants(quants, 0, out, |q| f32::from(q) * d + offset);
            }
            _ => {
                let offset = if format == QFormat::Q5_1 {
                    high
                } else {
                    -16.0 * d
                };
                let qh = block[1];
                unpack_quants(&quants[4..], qh, out, |q| f32::from(q) * d + offset);
            }
        }
    }

    /// `y = x W^T`, W `[rows, cols]`, x `[m, cols]`.
    pub(crate) fn matmul_nt(
        format: QFormat,
        words: &[u32],
        [rows, cols]: [usize; 2],
        x: &[f32],
        y: &mut [f32],
    ) {
        let m = x.len() / cols;
        if m <= MATVEC_ROWS {
            return matvec_nt(format, words, [rows, cols], x, y);
        }
        let mut part = vec![0.0; m * CPU_CHUNK_ROWS.min(rows)];
        for_each_chunk(format, words, [rows, cols], |r0, chunk| {
            // y[:, r0..r0 + r] = x chunk^T, written through y's row stride.
            let r = chunk.len() / cols;
            let part = &mut part[..m * r];
            gemm(x, (cols, 1), chunk, (1, cols), part, [m, cols, r], 0.0);
            for (dst, src) in y.chunks_exact_mut(rows).zip(part.chunks_exact(r)) {
                dst[r0..r0 + r].copy_from_slice(src);
            }
        });
    }

    /// Calls `f(first row, dequantized rows)` for W `[rows, cols]` in chunks of
    /// [`CPU_CHUNK_ROWS`] rows, so that a product never holds all of W in f32.
    fn for_each_chunk(
        format: QFormat,
        words: &[u32],
        [rows, cols]: [usize; 2],
        mut f: impl FnMut(usize, &[f32]),
    ) {
        let mut scratch = vec![0.0; CPU_CHUNK_ROWS.min(rows) * cols];
        for r0 in (0..rows).step_by(CPU_CHUNK_ROWS) {
            let chunk = &mut scratch[..CPU_CHUNK_ROWS.min(rows - r0) * cols];
            dequantize_rows(format, words, cols, r0, chunk);
            f(r0, chunk);
        }
    }

    /// `y = x W^T` for at most [`MATVEC_ROWS`] rows of x: W is read once, a block at a time,
    /// with its rows split over the cores (packing W for a GEMM would cost more than this).
    fn matvec_nt(
        format: QFormat,
        words: &[u32],
        [rows, cols]: [usize; 2],
        x: &[f32],
        y: &mut [f32],
    ) {
        let m = x.len() / cols;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = rows.div_ceil(threads.clamp(1, 8)).max(256);
        let part = |r0: usize| -> Vec<f32> {
            let r1 = (r0 + per).min(rows);
            let block = format.block_elems();
            let (nb, wpb) = (cols / block, format.words_per_block());
            let mut out = vec![0.0; (r1 - r0) * m];
            let mut buf = vec![0.0f32; block];
            for r in r0..r1 {
                let mut acc = [0.0f32; MATVEC_ROWS];
                for b in 0..nb {
                    let at = (r * nb + b) * wpb;
                    dequantize_block(format, &words[at..at + wpb], &mut buf);
                    for (i, a) in acc.iter_mut().enumerate().take(m) {
                        *a += dot(&buf, &x[i * cols + b * block..][..block]);
                    }
                }
                for (i, a) in acc.iter().enumerate().take(m) {
                    out[i * (r1 - r0) + r - r0] = *a;
                }
            }
            out
        };
        let starts: Vec<usize> = (0..rows).step_by(per).collect();
        let parts: Vec<Vec<f32>> = if starts.len() > 1 {
            std::thread::scope(|s| {
                let handles: Vec<_> = starts.iter().map(|&r0| s.spawn(move || part(r0))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        } else {
            starts.iter().map(|&r0| part(r0)).collect()
        };
        for (&r0, out) in starts.iter().zip(&parts) {
            let n = (r0 + per).min(rows) - r0;
            for (i, chunk) in out.chunks_exact(n).enumerate() {
                y[i * rows + r0..i * rows + r0 + n].copy_from_slice(chunk);
            }
        }
    }

    /// Dot product of two slices (a multiple of 8 long) in eight lanes.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 8];
        for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
            for ((l, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
                *l += x * y;
            }
        }
        lanes.iter().sum()
    }

    /// `dx = dy W`, W `[rows, cols]`, dy `[m, rows]`.
    pub(crate) fn matmul_nn(
        format: QFormat,
        words: &[u32],
        [rows, cols]: [usize; 2],
        dy: &[f32],
        dx: &mut [f32],
    ) {
        let m = dy.len() / rows;
        dx.fill(0.0);
        let mut slice = vec![0.0; m * CPU_CHUNK_ROWS.min(rows)];
        for_each_chunk(format, words, [rows, cols], |r0, chunk| {
            let r = chunk.len() / cols;
            let dys = &mut slice[..m * r];
            for (dst, src) in dys.chunks_exact_mut(r).zip(dy.chunks_exact(rows)) {
                dst.copy_from_slice(&src[r0..r0 + r]);
            }
            gemm(dys, (r, 1), chunk, (cols, 1), dx, [m, r, cols], 1.0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::matmul_t;
    use crate::ops::testing::{assert_close, check_gradient, gpu, probe, random};

    const FORMATS: [QFormat; 8] = QFormat::ALL;

    /// `c` columns of a 32-element test shape, widened 8 times for the k-quants' super-blocks.
    fn cols(format: QFormat, c: usize) -> usize {
        c * format.block_elems() / BLOCK
    }

    /// The CPU block decoder equals the model-file decoder, block for block.
    #[test]
    fn blocks_decode_like_the_file_format() {
        for format in FORMATS {
            let c = cols(format, 64);
            let values = random(4 * c, 1, 2.0);
            let bytes = crate::format::convert::from_f32(format.dtype(), &values).unwrap();
            let want = crate::format::convert::to_f32(format.dtype(), &bytes);
            let w = QMatrix::from_blocks(&Backend::Cpu, format, [4, c], &bytes).unwrap();
            assert_eq!(w.dequantize().unwrap(), want, "{format:?}");
            assert_eq!(
                w.bytes(),
                (4 * c / format.block_elems() * format.words_per_block() * 4) as u64
            );
            // Quantization error stays within one step of the block's range (values in
            // -2..2); a k-quant's 6-bit sub-scales may widen it by half.
            let step = match format {
                QFormat::Q8_0 => 2.0 / 127.0,
                QFormat::Q4_0 | QFormat::Q4_1 => 4.0 / 15.0,
                QFormat::Q5_0 | QFormat::Q5_1 => 4.0 / 31.0,
                QFormat::Q4_K => 1.5 * 4.0 / 15.0,
                QFormat::Q5_K => 1.5 * 4.0 / 31.0,
                QFormat::Q6_K => 1.5 * 4.0 / 63.0,
            };
            for (a, b) in want.iter().zip(&values) {
                assert!((a - b).abs() <= step, "{format:?}: {a} vs {b}");
            }
        }
    }

    /// A k-quant super-block is kept as its GGML bytes, padded to whole words.
    #[test]
    fn k_quant_words_hold_the_file_bytes() {
        let values = random(2 * 256, 4, 1.0);
        for format in [QFormat::Q4_K, QFormat::Q5_K, QFormat::Q6_K] {
            let bytes = crate::format::convert::from_f32(format.dtype(), &values).unwrap();
            let w = QMatrix::from_blocks(&Backend::Cpu, format, [2, 256], &bytes).unwrap();
            let words = w.host_words().unwrap();
            let held: &[u8] = bytemuck::cast_slice(&words);
            let size = format.words_per_block() * 4;
            for (b, block) in bytes.chunks_exact(format.block_bytes()).enumerate() {
                assert_eq!(&held[b * size..][..block.len()], block, "{format:?}");
            }
        }
        let b = Backend::Cpu;
        assert!(QMatrix::from_blocks(&b, QFormat::Q4_K, [2, 128], &[0; 144]).is_err());
    }

    #[test]
    fn bad_block_bytes_are_refused() {
        let b = Backend::Cpu;
        assert!(QMatrix::from_blocks(&b, QFormat::Q8_0, [2, 32], &[0; 67]).is_err());
        assert!(QMatrix::from_blocks(&b, QFormat::Q4_1, [1, 48], &[0; 30]).is_err());
        let w = QMatrix::quantize(&b, QFormat::Q8_0, [2, 32], &random(64, 1, 1.0)).unwrap();
        let x = Tensor::from_slice(&b, &[1, 31], &random(31, 2, 1.0)).unwrap();
        assert!(qmatmul(&x, &w).is_err(), "K mismatch must fail");
        let ids = Tensor::from_slice(&b, &[1], &[2.0]).unwrap();
        assert!(qembedding(&w, &ids).is_err(), "id past the rows must fail");
    }

    /// The quantized CPU product equals the f32 product with the dequantized matrix.
    fn dense(w: &QMatrix) -> Tensor {
        Tensor::from_slice(&Backend::Cpu, &w.shape(), &w.dequantize().unwrap()).unwrap()
    }

    /// GPU and CPU agree on awkward shapes (M not a multiple of 64, 1..4 rows for the
    /// matrix-vector kernel, R not a multiple of 64) for every format; both match the f32
    /// product with the dequantized weights to 1e-4 relative and 1e-5 absolute per 320 terms
    /// of a sum (up to 320 products, 2,560 for the k-quants).
    #[test]
    fn gpu_matches_cpu_on_awkward_shapes() {
        let g = gpu();
        let mut seed = 10;
        for format in FORMATS {
            for &(m, r, c) in &[
                (1, 1, 32),
                (3, 7, 64),
                (4, 65, 96),
                (5, 33, 32),
                (70, 130, 320),
            ] {
                let c = cols(format, c);
                // Rounding grows with the length of the sums.
                let abs = 1e-5 * (c as f32 / 320.0).max(1.0);
                seed += 1;
                let values = random(r * c, seed, 1.0);
                let wc = QMatrix::quantize(&Backend::Cpu, format, [r, c], &values).unwrap();
                let wg = QMatrix::quantize(&g, format, [r, c], &values).unwrap();
                let xv = random(m * c, seed + 50, 1.0);
                let xc = Tensor::from_slice(&Backend::Cpu, &[m, c], &xv).unwrap();
                let what = format!("{format:?} {m}x{c} . [{r}, {c}]^T");
                let want = matmul_t(&xc, &dense(&wc), false, true).unwrap();
                assert_close(&what, &qmatmul(&xc, &wc).unwrap(), &want, 1e-4, abs);
                let got = qmatmul(&xc.to_backend(&g).unwrap(), &wg).unwrap();
                assert_close(&what, &got, &want, 1e-4, abs);

                let dyv = random(m * r, seed + 90, 1.0);
                let dyc = Tensor::from_slice(&Backend::Cpu, &[m, r], &dyv).unwrap();
                let what = format!("{format:?} backward {m}x{r} . [{r}, {c}]");
                let want = matmul_t(&dyc, &dense(&wc), false, false).unwrap();
                assert_close(
                    &what,
                    &qmatmul_backward(&wc, &dyc).unwrap(),
                    &want,
                    1e-4,
                    abs,
                );
                let got = qmatmul_backward(&wg, &dyc.to_backend(&g).unwrap()).unwrap();
                assert_close(&what, &got, &want, 1e-4, abs);
            }
        }
    }

    #[test]
    fn batched_inputs_fold_into_rows() {
        let g = gpu();
        let w = QMatrix::quantize(&g, QFormat::Q4_1, [9, 64], &random(9 * 64, 3, 1.0)).unwrap();
        let x = Tensor::from_slice(&g, &[2, 3, 64], &random(6 * 64, 4, 1.0)).unwrap();
        let y = qmatmul(&x, &w).unwrap();
        assert_eq!(y.shape(), &[2, 3, 9]);
        let dx = qmatmul_backward(&w, &y).unwrap();
        assert_eq!(dx.shape(), &[2, 3, 64]);
    }

    #[test]
    fn embedding_gathers_dequantized_rows() {
        let g = gpu();
        for format in FORMATS {
            let c = cols(format, 96);
            let values = random(11 * c, 5, 1.0);
            let wc = QMatrix::quantize(&Backend::Cpu, format, [11, c], &values).unwrap();
            let wg = QMatrix::quantize(&g, format, [11, c], &values).unwrap();
            let ids = [3.0, 0.0, 10.0, 3.0, 7.0];
            let dense = wc.dequantize().unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| dense[i as usize * c..(i as usize + 1) * c].to_vec())
                .collect();
            let ic = Tensor::from_slice(&Backend::Cpu, &[5], &ids).unwrap();
            assert_eq!(qembedding(&wc, &ic).unwrap().to_vec().unwrap(), want);
            let got = qembedding(&wg, &ic.to_backend(&g).unwrap()).unwrap();
            assert_eq!(got.shape(), &[5, c]);
            assert_eq!(got.to_vec().unwrap(), want, "{format:?}");
        }
    }

    /// The recorded backward is `dy W`, checked against finite differences.
    #[test]
    fn graph_backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let w = QMatrix::quantize(&cpu, QFormat::Q4_1, [5, 32], &random(160, 6, 1.0)).unwrap();
        let xv = random(3 * 32, 7, 1.0);
        let probe_w = random(3 * 5, 8, 1.0);
        let mut g = Graph::new(&cpu);
        let x = g.input_with_grad(Tensor::from_slice(&cpu, &[3, 32], &xv).unwrap());
        let y = g.qmatmul(x, &w).unwrap();
        let pw = g.input(Tensor::from_slice(&cpu, &[3, 5], &probe_w).unwrap());
        let prod = g.mul(y, pw).unwrap();
        let loss = g.sum_all(prod).unwrap();
        let grads = g.backward(loss).unwrap();
        let dx = grads.get(x).unwrap().to_vec().unwrap();
        let loss_at = |v: &[f32]| {
            let x = Tensor::from_slice(&cpu, &[3, 32], v).unwrap();
            probe(&qmatmul(&x, &w).unwrap().to_vec().unwrap(), &probe_w)
        };
        check_gradient("dx", &xv, &dx, loss_at, 1e-2);
    }
}
