//! Channels-last (NHWC) building blocks for the backbones: a depthwise convolution, and linear
//! layers (1×1 convs, MLPs, patchify convs) with their epilogue fused into one pass.
//!
//! Channels-last lets every layer but the depthwise one be a single matmul over `[N·H·W, C]`
//! and makes the depthwise kernel vectorise across channels, so both networks run with no
//! layout permutes between blocks. On CPU the matmuls go to OpenBLAS (already linked for FAISS;
//! feature `openblas`, on by default), which is 1.5–2.5× faster than candle's `gemm` on these
//! shapes, and the epilogues (bias, exact-erf GELU, clamp, residual add) run over the output
//! rows in place. On CUDA the depthwise conv and the epilogues are our own kernels
//! (`kernels/kadr_ops.cu`) and the matmul is cuBLAS. Anything else (other devices or dtypes)
//! takes candle's generic ops, which is also the reference the tests compare against.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::layout::{f32s, Pad4};

/// What runs on a linear layer's output before anything else reads it.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `y + b`.
    Bias,
    /// `gelu_erf(y + b)`.
    BiasGelu,
    /// `clamp(y + b, lo, hi)` (ReLU6 is `(0, 6)`).
    BiasClamp(f32, f32),
    /// `r + y + b`: the residual add of a block (`r` has the output's shape).
    BiasResidual(&'a Tensor),
}

/// `x` [M, K] · `w`ᵀ (`w` [N, K], the PyTorch layout), then `epilogue` with `b` [N].
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (n, wk) = w.dims2()?;
    if wk != k || b.dims1()? != n {
        candle_core::bail!(
            "linear: weight {:?} and bias {:?} do not fit input {:?}",
            w.shape(),
            b.shape(),
            x.shape()
        )
    }
    if let Epilogue::BiasResidual(r) = epilogue {
        if r.dims() != [m, n] {
            candle_core::bail!("linear: residual {:?} is not [{m}, {n}]", r.shape())
        }
    }
    #[cfg(feature = "openblas")]
    if x.device().is_cpu() && [x.dtype(), w.dtype(), b.dtype()] == [DType::F32; 3] {
        return cpu::linear(x, w, b, epilogue);
    }
    let y = x.matmul(&w.t()?)?;
    match epilogue {
        Epilogue::Bias => y.broadcast_add(b),
        Epilogue::BiasGelu => bias_gelu(&y, b),
        Epilogue::BiasClamp(lo, hi) => y.broadcast_add(b)?.clamp(lo, hi),
        Epilogue::BiasResidual(r) => {
            r.contiguous()?
                .apply_op3_no_bwd(&y.contiguous()?, &b.contiguous()?, &ResidualBias)
        }
    }
}

/// `gelu_erf(y + b)` over the last dim of `y`; one fused pass on CPU (f32) and CUDA.
pub fn bias_gelu(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = y.contiguous()?;
    y.apply_op2_no_bwd(&b.contiguous()?, &BiasGelu)
}

/// Depthwise conv, channels-last: `x` [N, H, W, C], `w` [KH, KW, C], bias `b` [C], then an
/// optional clamp; output [N, OH, OW, C].
pub fn dwconv(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    pad: Pad4,
    clamp: Option<(f32, f32)>,
) -> Result<Tensor> {
    let (_, h, wd, c) = x.dims4()?;
    let (kh, kw, wc) = w.dims3()?;
    if wc != c || b.dims1()? != c {
        candle_core::bail!(
            "dwconv: weight {:?} / bias {:?} do not fit input {:?}",
            w.shape(),
            b.shape(),
            x.shape()
        )
    }
    if stride == 0 || h + pad.top + pad.bottom < kh || wd + pad.left + pad.right < kw {
        candle_core::bail!(
            "dwconv: kernel {kh}x{kw} stride {stride} too large for {h}x{wd} with {pad:?}"
        )
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let native = (x.device().is_cpu() && x.dtype() == DType::F32) || x.device().is_cuda();
    let same = w.dtype() == x.dtype() && b.dtype() == x.dtype();
    if native && same {
        // The CPU kernel fuses the clamp; on CUDA it is a separate op.
        let fused = if x.device().is_cpu() { clamp } else { None };
        let y = x.apply_op3_no_bwd(
            &w,
            &b,
            &DwConv {
                stride,
                pad,
                clamp: fused,
            },
        )?;
        return match (fused, clamp) {
            (None, Some((lo, hi))) => y.clamp(lo, hi),
            _ => Ok(y),
        };
    }
    // Reference path: candle's grouped conv on NCHW.
    let y = x
        .permute((0, 3, 1, 2))?
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?
        .conv2d(&w.permute((2, 0, 1))?.unsqueeze(1)?, 0, stride, 1, c)?
        .permute((0, 2, 3, 1))?
        .broadcast_add(&b)?;
    match clamp {
        Some((lo, hi)) => y.clamp(lo, hi),
        None => Ok(y),
    }
}

/// Reorders a PyTorch depthwise weight [C, 1, KH, KW] to the [KH, KW, C] that [`dwconv`] takes.
pub fn dw_weight(w: &Tensor) -> Result<Tensor> {
    w.squeeze(1)?.permute((1, 2, 0))?.contiguous()
}

/// `x` [N, H, W, C] → non-overlapping `p`×`p` patches as rows [N·H/p·W/p, p·p·C] in
/// (dy, dx, c) order, the input of a stride-`p` `p`×`p` conv run as a matmul.
pub fn patches(x: &Tensor, p: usize) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if h % p != 0 || w % p != 0 {
        candle_core::bail!("patches: {h}x{w} is not a multiple of {p}")
    }
    x.reshape((n, h / p, p, w / p, p, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((n * (h / p) * (w / p), p * p * c))
}

/// im2col of an NCHW f32 CPU tensor for a `k`×`k` conv: rows [N·OH·OW, K·K·C] in
/// (ky, kx, c) order, zero outside the image; `None` where there is no CPU kernel for it (the
/// caller then runs candle's conv2d).
pub fn im2col_nchw(x: &Tensor, k: usize, stride: usize, pad: Pad4) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let (n, c, h, w) = x.dims4()?;
    if stride == 0 || h + pad.top + pad.bottom < k || w + pad.left + pad.right < k {
        candle_core::bail!("im2col: kernel {k} stride {stride} too large for {h}x{w}")
    }
    let oh = (h + pad.top + pad.bottom - k) / stride + 1;
    let ow = (w + pad.left + pad.right - k) / stride + 1;
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let xv = match &*xs {
        candle_core::Storage::Cpu(s) => f32s(s, xl, "im2col")?,
        _ => return Ok(None),
    };
    let cols = k * k * c;
    let mut out = vec![0f32; n * oh * ow * cols];
    out.par_chunks_mut(ow * cols)
        .enumerate()
        .for_each(|(r, orow)| {
            let (img, oy) = (r / oh, r % oh);
            let plane = |ch: usize| &xv[(img * c + ch) * h * w..(img * c + ch + 1) * h * w];
            for (ox, o) in orow.chunks_exact_mut(cols).enumerate() {
                for ky in 0..k {
                    let Some(iy) = (oy * stride + ky).checked_sub(pad.top).filter(|&v| v < h)
                    else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(ix) = (ox * stride + kx).checked_sub(pad.left).filter(|&v| v < w)
                        else {
                            continue;
                        };
                        for ch in 0..c {
                            o[(ky * k + kx) * c + ch] = plane(ch)[iy * w + ix];
                        }
                    }
                }
            }
        });
    drop(xs);
    Ok(Some(Tensor::from_vec(
        out,
        (n * oh * ow, cols),
        x.device(),
    )?))
}

/// A PyTorch conv weight [Cout, Cin, KH, KW] as the [Cout, KH·KW·Cin] matrix that multiplies
/// [`patches`] rows (and channels-last im2col rows in general).
pub fn conv_weight_rows(w: &Tensor) -> Result<Tensor> {
    let (co, ci, kh, kw) = w.dims4()?;
    w.permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((co, kh * kw * ci))
}

/// `a·b + c`, fused where the CPU has FMA. The kernels are compiled twice: once with AVX2+FMA
/// enabled (picked at run time, as PyTorch does) and once for the baseline x86-64 target, where
/// `mul_add` would be a slow libm call and the plain expression is used instead.
trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// Fused multiply-add (only inside functions compiled with the `fma` target feature).
struct Fused;
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Separate multiply and add.
struct Plain;
impl Madd for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Whether this CPU runs the AVX2+FMA builds of the kernels.
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// exact-erf GELU, `0.5·x·(1 + erf(x/√2))`, with a vectorisable erf.
#[inline(always)]
fn gelu_erf_with<M: Madd>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_with::<M>(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf for f32 as a rational function on [-4, 4] (Eigen's and XLA's `erf` for float; absolute
/// error under 1e-6, saturating beyond). Only multiply-adds and one division, so loops over it
/// vectorise, unlike libm's `erff`, which cost more than the rest of GELU on CPU.
#[inline(always)]
fn erf_with<M: Madd>(x: f32) -> f32 {
    // Not `clamp`: its NaN checks keep the loop from vectorising.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-4.0).min(4.0);
    let x2 = x * x;
    let mut p = M::madd(x2, -2.726_142_3e-10, 2.770_681_4e-8);
    p = M::madd(x2, p, -2.101_024e-6);
    p = M::madd(x2, p, -5.692_506_4e-5);
    p = M::madd(x2, p, -7.349_906_3e-4);
    p = M::madd(x2, p, -2.954_600_1e-3);
    p = M::madd(x2, p, -1.609_603_3e-2);
    let mut q = M::madd(x2, -1.456_607_2e-5, -2.133_740_6e-4);
    q = M::madd(x2, q, -1.682_827e-3);
    q = M::madd(x2, q, -7.373_329e-3);
    q = M::madd(x2, q, -1.426_474e-2);
    x * p / q
}

/// What an epilogue applies to `value + bias`.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "openblas"), allow(dead_code))]
enum Act {
    Identity,
    Gelu,
    Clamp(f32, f32),
}

/// Rows of `y` (each `b.len()` long) get `act(value + bias)`, in parallel.
fn rows_in_place(y: &mut [f32], b: &[f32], act: Act) {
    let n = b.len();
    let simd = simd();
    // Blocks of whole rows, ~64 KiB each, so rayon's per-task cost stays small.
    let rows = (16384 / n.max(1)).max(1);
    y.par_chunks_mut(rows * n)
        .for_each(|block| act_block_dispatch(block, b, act, simd));
}

/// [`act_block`] in its AVX2+FMA build where `simd` (from [`simd`]), else the baseline one.
fn act_block_dispatch(block: &mut [f32], b: &[f32], act: Act, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only where the CPU reports AVX2 and FMA.
        return unsafe { act_block_fma(block, b, act) };
    }
    let _ = simd;
    act_block::<Plain>(block, b, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn act_block_fma(block: &mut [f32], b: &[f32], act: Act) {
    act_block::<Fused>(block, b, act)
}

#[inline(always)]
fn act_block<M: Madd>(block: &mut [f32], b: &[f32], act: Act) {
    for row in block.chunks_exact_mut(b.len()) {
        match act {
            Act::Identity => row.iter_mut().zip(b).for_each(|(v, &bias)| *v += bias),
            Act::Gelu => row
                .iter_mut()
                .zip(b)
                .for_each(|(v, &bias)| *v = gelu_erf_with::<M>(*v + bias)),
            Act::Clamp(lo, hi) => row
                .iter_mut()
                .zip(b)
                .for_each(|(v, &bias)| *v = (*v + bias).max(lo).min(hi)),
        }
    }
}

/// `y[i] = r[i] + y[i] + b[i % n]`, in parallel.
fn residual_rows_in_place(y: &mut [f32], r: &[f32], b: &[f32]) {
    let n = b.len();
    let rows = (16384 / n.max(1)).max(1);
    y.par_chunks_mut(rows * n)
        .zip(r.par_chunks(rows * n))
        .for_each(|(yb, rb)| residual_block(yb, rb, b));
}

fn residual_block(y: &mut [f32], r: &[f32], b: &[f32]) {
    for (row, rrow) in y.chunks_exact_mut(b.len()).zip(r.chunks_exact(b.len())) {
        for ((v, &res), &bias) in row.iter_mut().zip(rrow).zip(b) {
            *v = res + *v + bias;
        }
    }
}

#[cfg(feature = "openblas")]
mod cpu {
    use super::*;

    // OpenBLAS's CBLAS, linked by FAISS already (Debian `libopenblas-dev`).
    #[link(name = "openblas")]
    extern "C" {
        fn cblas_sgemm(
            order: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        fn openblas_set_num_threads(n: i32);
    }
    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;

    /// A raw output pointer shared by tasks that write disjoint columns.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: each task writes only its own column range of the output.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    impl Out {
        /// The pointer (a method, so closures capture the whole `Sync` wrapper).
        fn get(&self) -> *mut f32 {
            self.0
        }
    }

    /// One thread's block: `y` [rows, n] = `x` [rows, k] · `w`ᵀ; returns `y`, now written.
    fn block<'a>(
        x: &[f32],
        w: &[f32],
        y: &'a mut [std::mem::MaybeUninit<f32>],
        k: usize,
        n: usize,
    ) -> &'a mut [f32] {
        let rows = y.len() / n;
        // SAFETY: x is rows×k, w is n×k, y is rows×n, all row-major and contiguous, and the
        // sizes fit i32 (checked by the caller).
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                rows as i32,
                n as i32,
                k as i32,
                1.0,
                x.as_ptr(),
                k as i32,
                w.as_ptr(),
                k as i32,
                0.0,
                y.as_mut_ptr().cast::<f32>(),
                n as i32,
            )
        };
        // SAFETY: sgemm with beta 0 has written all rows×n elements.
        unsafe { &mut *(y as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
    }

    pub(super) fn linear(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        static SINGLE_THREADED: std::sync::Once = std::sync::Once::new();
        // rayon splits the rows; OpenBLAS's own pool would spin against rayon's workers.
        // SAFETY: a plain setter of OpenBLAS's thread count.
        SINGLE_THREADED.call_once(|| unsafe { openblas_set_num_threads(1) });

        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let too_big = |v: usize| i32::try_from(v).is_err();
        if too_big(m) || too_big(n) || too_big(k) || too_big(m * n) {
            candle_core::bail!("linear: {m}x{k}x{n} is too large for BLAS")
        }
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        let r = match epilogue {
            Epilogue::BiasResidual(r) => Some(r.contiguous()?),
            _ => None,
        };
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let (xv, wv, bv) = (cpu_f32(&xs, xl)?, cpu_f32(&ws, wl)?, cpu_f32(&bs, bl)?);
        let rs = r.as_ref().map(|r| r.storage_and_layout());
        let rv = match &rs {
            Some((s, l)) => Some(cpu_f32(s, l)?),
            None => None,
        };
        let simd = simd();
        let act = match epilogue {
            Epilogue::Bias | Epilogue::BiasResidual(_) => Act::Identity,
            Epilogue::BiasGelu => Act::Gelu,
            Epilogue::BiasClamp(lo, hi) => Act::Clamp(lo, hi),
        };
        // One sgemm per thread. Each call packs all of its slice of `x` and of `w`, so split
        // the larger of the two dimensions: rows for large batches and early stages, columns
        // (output channels) where the weight is larger than the activations (batch 1, late
        // stages), so no thread repacks the whole weight.
        let threads = rayon::current_num_threads().max(1);
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        if m >= n || threads == 1 {
            let rows = m.div_ceil(threads).max(1);
            // Uninitialised: sgemm with beta 0 writes every element before anything reads it.
            y.spare_capacity_mut()[..m * n]
                .par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(i, yc)| {
                    let r0 = i * rows;
                    let xc = &xv[r0 * k..(r0 + yc.len() / n) * k];
                    let yc = block(xc, wv, yc, k, n);
                    match rv {
                        Some(rv) => residual_block(yc, &rv[r0 * n..r0 * n + yc.len()], bv),
                        None => act_block_dispatch(yc, bv, act, simd),
                    }
                });
            drop((xs, ws, bs, rs));
            // SAFETY: every block above was written by sgemm.
            unsafe { y.set_len(m * n) };
            return Tensor::from_vec(y, (m, n), x.device());
        }
        let cols = n.div_ceil(threads).next_multiple_of(16).min(n);
        let out = Out(y.as_mut_ptr());
        (0..n.div_ceil(cols)).into_par_iter().for_each(|t| {
            let (c0, width) = (t * cols, cols.min(n - t * cols));
            // SAFETY: rows of x (m×k) times rows c0..c0+width of w (n×k) into columns
            // c0..c0+width of y (m×n, capacity m·n, row stride n); tasks write disjoint columns
            // and sizes fit i32 (checked above).
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    m as i32,
                    width as i32,
                    k as i32,
                    1.0,
                    xv.as_ptr(),
                    k as i32,
                    wv.as_ptr().add(c0 * k),
                    k as i32,
                    0.0,
                    out.get().add(c0),
                    n as i32,
                )
            };
        });
        // SAFETY: the column blocks above cover every element.
        unsafe { y.set_len(m * n) };
        match rv {
            Some(rv) => residual_rows_in_place(&mut y, rv, bv),
            None => rows_in_place(&mut y, bv, act),
        }
        drop((xs, ws, bs, rs));
        Tensor::from_vec(y, (m, n), x.device())
    }

    fn cpu_f32<'a>(s: &'a candle_core::Storage, l: &Layout) -> Result<&'a [f32]> {
        match s {
            candle_core::Storage::Cpu(c) => f32s(c, l, "linear"),
            _ => candle_core::bail!("linear: not on the CPU"),
        }
    }
}

/// `gelu_erf(y + b)`, `b` over the last dim.
struct BiasGelu;

impl candle_core::CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (f32s(s1, l1, "bias-gelu")?, f32s(s2, l2, "bias-gelu")?);
        if y.len() % b.len().max(1) != 0 {
            candle_core::bail!("bias-gelu: bias does not fit the last dim")
        }
        let mut out = y.to_vec();
        rows_in_place(&mut out, b, Act::Gelu);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::bias_gelu(s1, l1, s2, l2)
    }
}

/// `r + y + b`: operands are (r, y, b).
struct ResidualBias;

impl CustomOp3 for ResidualBias {
    fn name(&self) -> &'static str {
        "residual-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let r = f32s(s1, l1, "residual-bias")?;
        let y = f32s(s2, l2, "residual-bias")?;
        let b = f32s(s3, l3, "residual-bias")?;
        if r.len() != y.len() || y.len() % b.len().max(1) != 0 {
            candle_core::bail!("residual-bias: shapes do not fit")
        }
        let mut out = y.to_vec();
        residual_rows_in_place(&mut out, r, b);
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::residual_bias(s1, l1, s2, l2, s3, l3)
    }
}

/// The depthwise conv op on (x [N,H,W,C], w [KH,KW,C], b [C]).
struct DwConv {
    stride: usize,
    pad: Pad4,
    clamp: Option<(f32, f32)>,
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "dwconv-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "dwconv")?;
        let w = f32s(s2, l2, "dwconv")?;
        let b = f32s(s3, l3, "dwconv")?;
        let (n, h, wd, c) = l1.shape().dims4()?;
        let (kh, kw, _) = l2.shape().dims3()?;
        let g = Geometry::new(h, wd, c, kh, kw, self.stride, self.pad, self.clamp);
        let mut out = vec![0f32; n * g.oh * g.ow * c];
        let simd = simd();
        out.par_chunks_mut(g.ow * c)
            .enumerate()
            .for_each(|(row, o)| {
                let (img, oy) = (row / g.oh, row % g.oh);
                let x = &x[img * h * wd * c..(img + 1) * h * wd * c];
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` is true only where the CPU reports AVX2 and FMA.
                    unsafe { g.row_fma(x, w, b, oy, o) };
                } else {
                    g.row::<Plain>(x, w, b, oy, o);
                }
                #[cfg(not(target_arch = "x86_64"))]
                g.row::<Plain>(x, w, b, oy, o);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, g.oh, g.ow, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.clamp.is_some() {
            candle_core::bail!("dwconv: the CUDA kernel has no fused clamp")
        }
        crate::cuda::dwconv_nhwc(self.stride, self.pad, s1, l1, s2, l2, s3, l3)
    }
}

/// Sizes of one depthwise conv, and its output clamp.
struct Geometry {
    h: usize,
    w: usize,
    c: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    pad: Pad4,
    /// `(lo, hi)`; `(-inf, inf)` for none.
    clamp: (f32, f32),
}

impl Geometry {
    #[allow(clippy::too_many_arguments)]
    fn new(
        h: usize,
        w: usize,
        c: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: Pad4,
        clamp: Option<(f32, f32)>,
    ) -> Self {
        Self {
            clamp: clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY)),
            h,
            w,
            c,
            kh,
            kw,
            oh: (h + pad.top + pad.bottom - kh) / stride + 1,
            ow: (w + pad.left + pad.right - kw) / stride + 1,
            stride,
            pad,
        }
    }

    /// Input index range of kernel taps that land inside the image for output coordinate `o`.
    fn taps(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> (usize, usize) {
        let start = o * stride; // padded coordinate of tap 0
        let lo = pad.saturating_sub(start).min(k);
        let hi = (size + pad).saturating_sub(start).min(k);
        (lo, hi.max(lo))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_fma(&self, x: &[f32], w: &[f32], b: &[f32], oy: usize, out: &mut [f32]) {
        self.row::<Fused>(x, w, b, oy, out)
    }

    /// One output row `oy` of one image: `out` is [OW, C], clamped to `[lo, hi]`.
    #[inline(always)]
    fn row<M: Madd>(&self, x: &[f32], w: &[f32], b: &[f32], oy: usize, out: &mut [f32]) {
        let c = self.c;
        let (ky0, ky1) = Self::taps(oy, self.stride, self.pad.top, self.kh, self.h);
        for (ox, o) in out.chunks_exact_mut(c).enumerate() {
            let (kx0, kx1) = Self::taps(ox, self.stride, self.pad.left, self.kw, self.w);
            let taps = Taps {
                iy0: oy * self.stride + ky0 - self.pad.top,
                ky: ky0..ky1,
                ix0: ox * self.stride + kx0 - self.pad.left,
                kx: kx0..kx1,
            };
            // Channels in register blocks of 32, then 8, then one at a time; each block
            // accumulates every tap before it is stored.
            let mut c0 = 0;
            while c0 + 32 <= c {
                self.block::<M, 32>(x, w, b, &taps, c0, o);
                c0 += 32;
            }
            while c0 + 8 <= c {
                self.block::<M, 8>(x, w, b, &taps, c0, o);
                c0 += 8;
            }
            while c0 < c {
                self.block::<M, 1>(x, w, b, &taps, c0, o);
                c0 += 1;
            }
        }
    }

    /// Channels `c0..c0 + L` of one output pixel.
    #[inline(always)]
    fn block<M: Madd, const L: usize>(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        t: &Taps,
        c0: usize,
        o: &mut [f32],
    ) {
        let c = self.c;
        let mut acc = [0f32; L];
        acc.copy_from_slice(&b[c0..c0 + L]);
        for (dy, ky) in t.ky.clone().enumerate() {
            let iy = t.iy0 + dy;
            for (dx, kx) in t.kx.clone().enumerate() {
                let ix = t.ix0 + dx;
                let xs = &x[(iy * self.w + ix) * c + c0..][..L];
                let ws = &w[(ky * self.kw + kx) * c + c0..][..L];
                for l in 0..L {
                    acc[l] = M::madd(xs[l], ws[l], acc[l]);
                }
            }
        }
        let (lo, hi) = self.clamp;
        for a in acc.iter_mut() {
            *a = a.max(lo).min(hi);
        }
        o[c0..c0 + L].copy_from_slice(&acc);
    }
}

/// The kernel taps of one output pixel that land inside the image.
struct Taps {
    /// Input row of tap `ky.start`.
    iy0: usize,
    ky: std::ops::Range<usize>,
    /// Input column of tap `kx.start`.
    ix0: usize,
    kx: std::ops::Range<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use kadr_testkit::max_abs_diff as max_diff;

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// candle's grouped conv on NCHW, the reference.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, p: Pad4) -> Tensor {
        let c = x.dim(3).unwrap();
        x.permute((0, 3, 1, 2))
            .unwrap()
            .pad_with_zeros(2, p.top, p.bottom)
            .unwrap()
            .pad_with_zeros(3, p.left, p.right)
            .unwrap()
            .conv2d(
                &w.permute((2, 0, 1)).unwrap().unsqueeze(1).unwrap(),
                0,
                stride,
                1,
                c,
            )
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap()
            .broadcast_add(b)
            .unwrap()
    }

    #[test]
    fn dwconv_matches_grouped_conv() {
        let asym = Pad4 {
            top: 0,
            bottom: 2,
            left: 3,
            right: 1,
        };
        // Channel counts below, at and past the register block, odd sizes, both strides.
        for (n, h, w, c, k, s, p) in [
            (2, 13, 11, 5, 3, 1, Pad4::uniform(1)),
            (2, 13, 11, 37, 3, 2, Pad4::uniform(1)),
            (1, 16, 16, 32, 3, 2, Pad4::tf_same(16, 16, 3, 3, 2)),
            (2, 15, 17, 70, 5, 1, Pad4::uniform(2)),
            (1, 15, 17, 64, 5, 2, Pad4::tf_same(15, 17, 5, 5, 2)),
            (2, 14, 14, 96, 7, 1, Pad4::uniform(3)),
            (1, 7, 7, 33, 7, 1, Pad4::uniform(3)),
            (1, 9, 10, 3, 3, 1, Pad4::uniform(0)),
            (2, 12, 9, 40, 5, 2, asym),
        ] {
            let x = randn(&[n, h, w, c]);
            let wt = randn(&[k, k, c]);
            let b = randn(&[c]);
            let fast = dwconv(&x, &wt, &b, s, p, None).unwrap();
            let slow = reference(&x, &wt, &b, s, p);
            assert_eq!(fast.dims(), slow.dims(), "c{c} k{k} s{s} {p:?}");
            let d = max_diff(&fast, &slow);
            assert!(d <= 1e-4, "c{c} k{k} s{s} {p:?}: max abs diff {d}");
            let clamped = dwconv(&x, &wt, &b, s, p, Some((0.0, 6.0))).unwrap();
            assert!(max_diff(&clamped, &slow.clamp(0f32, 6f32).unwrap()) <= 1e-4);
        }
    }

    #[test]
    fn dw_weight_reorders_pytorch_layout() {
        let w = randn(&[6, 1, 3, 3]);
        let r = dw_weight(&w).unwrap();
        assert_eq!(r.dims(), [3, 3, 6]);
        let a = w.i((4, 0, 1, 2)).unwrap().to_scalar::<f32>().unwrap();
        let b = r.i((1, 2, 4)).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0f32;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((erf_with::<Plain>(x) - libm_erf(x)).abs());
        }
        assert!(worst < 2e-6, "worst erf error {worst}");
    }

    fn libm_erf(x: f32) -> f32 {
        // candle's gelu_erf uses the same libm erf; compare through it.
        let t = Tensor::new(&[x * std::f32::consts::SQRT_2], &Device::Cpu).unwrap();
        let g = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap()[0];
        // gelu(z) = 0.5 z (1 + erf(z / √2)) → erf(x) = 2 g / z - 1 (z ≠ 0).
        let z = x * std::f32::consts::SQRT_2;
        if z == 0.0 {
            0.0
        } else {
            2.0 * g / z - 1.0
        }
    }

    #[test]
    fn linear_epilogues_match_tensor_ops() {
        // More rows than columns (split by rows) and fewer (split by output channels).
        for (m, k, n) in [(37, 24, 19), (5, 24, 70), (1, 33, 1000)] {
            let x = randn(&[m, k]);
            let w = randn(&[n, k]);
            let b = randn(&[n]);
            let r = randn(&[m, n]);
            let plain = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let cases = [
                (linear(&x, &w, &b, Epilogue::Bias).unwrap(), plain.clone()),
                (
                    linear(&x, &w, &b, Epilogue::BiasGelu).unwrap(),
                    plain.gelu_erf().unwrap(),
                ),
                (
                    linear(&x, &w, &b, Epilogue::BiasClamp(0.0, 6.0)).unwrap(),
                    plain.clamp(0f32, 6f32).unwrap(),
                ),
                (
                    linear(&x, &w, &b, Epilogue::BiasResidual(&r)).unwrap(),
                    (&plain + &r).unwrap(),
                ),
            ];
            for (i, (got, want)) in cases.iter().enumerate() {
                let d = max_diff(got, want);
                assert!(d < 1e-4, "{m}x{k}x{n} epilogue {i}: max abs diff {d}");
            }
            assert!(linear(&x, &w.t().unwrap(), &b, Epilogue::Bias).is_err());
        }
    }

    #[test]
    fn patches_feed_a_strided_conv() {
        let x = randn(&[2, 3, 8, 12]); // NCHW
        let w = randn(&[5, 3, 4, 4]);
        let b = randn(&[5]);
        let want = x
            .conv2d(&w, 0, 4, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        let rows = patches(&x.permute((0, 2, 3, 1)).unwrap(), 4).unwrap();
        let got = linear(&rows, &conv_weight_rows(&w).unwrap(), &b, Epilogue::Bias)
            .unwrap()
            .reshape((2, 2, 3, 5))
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
    }

    #[test]
    fn im2col_feeds_a_padded_strided_conv() {
        let x = randn(&[2, 3, 11, 10]);
        let w = randn(&[6, 3, 3, 3]);
        let b = randn(&[6]);
        let p = Pad4::tf_same(11, 10, 3, 3, 2);
        let want = x
            .pad_with_zeros(2, p.top, p.bottom)
            .unwrap()
            .pad_with_zeros(3, p.left, p.right)
            .unwrap()
            .conv2d(&w, 0, 2, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        let rows = im2col_nchw(&x, 3, 2, p).unwrap().unwrap();
        let got = linear(&rows, &conv_weight_rows(&w).unwrap(), &b, Epilogue::Bias)
            .unwrap()
            .reshape(want.dims())
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
    }

    use candle_core::IndexOp;
}
