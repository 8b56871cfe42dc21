//! CUDA side of the channels-last custom ops: launches kadr's own kernels
//! (`kadr_ops.cu`, compiled to PTX by `build.rs`) from the ops' `cuda_fwd`.
//!
//! Every function takes contiguous operands (possibly starting at an offset) of one dtype among
//! f32, f16 and bf16, computes in f32 and returns a fresh contiguous tensor. The PTX module is
//! loaded once per device through candle's custom-module cache.

use crate::layout::Pad4;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, WithDType};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kadr_ops.ptx"));
const MODULE: &str = "kadr_ops";
const BLOCK: u32 = 256;
/// Grid caps (every kernel is grid-stride, so any cap is correct).
const MAX_BLOCKS: usize = 1 << 15;
const MAX_TILE_BLOCKS: usize = 1 << 20;

/// The contiguous window of `s` that `l` describes, and its start offset in elements.
fn window<'a, T>(s: &'a CudaSlice<T>, l: &Layout, op: &str) -> Result<(CudaView<'a, T>, usize)> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok((s.slice(a..b), a)),
        None => bail!("{op}: operands must be contiguous"),
    }
}

fn blocks(threads: usize, cap: usize) -> u32 {
    threads.div_ceil(BLOCK as usize).clamp(1, cap) as u32
}

fn cfg(grid: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn as_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} is too large")))
}

/// Depthwise conv, channels-last: x [N,H,W,C], w [KH,KW,C], b [C] -> [N,OH,OW,C],
/// OH = (H + top + bottom - KH)/stride + 1 (same for W).
/// out = b[c] + sum_{ky,kx} w[ky,kx,c] * x[n, oy*stride+ky-top, ox*stride+kx-left, c] (zero outside).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dwconv_nhwc(
    stride: usize,
    pad: Pad4,
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, h, wd, c) = lx.shape().dims4()?;
    let (kh, kw, wc) = lw.shape().dims3()?;
    let bc = lb.shape().dims1()?;
    if wc != c || bc != c {
        bail!("dwconv-nhwc: x has {c} channels, w {wc}, b {bc}")
    }
    if stride == 0
        || kh == 0
        || kw == 0
        || h + pad.top + pad.bottom < kh
        || wd + pad.left + pad.right < kw
    {
        bail!("dwconv-nhwc: kernel {kh}x{kw} stride {stride} does not fit input {h}x{wd} with {pad:?}")
    }
    let oh = (h + pad.top + pad.bottom - kh) / stride + 1;
    let ow = (wd + pad.left + pad.right - kw) / stride + 1;
    let g = DwGeom {
        n,
        h,
        w: wd,
        c,
        kh,
        kw,
        stride,
        oh,
        ow,
        top: pad.top,
        left: pad.left,
    };
    let dev = &x.device;
    let slice = match (&x.slice, &w.slice, &b.slice) {
        (S::F32(x), S::F32(w), S::F32(b)) => S::F32(dw_launch(dev, &g, x, lx, w, lw, b, lb)?),
        (S::F16(x), S::F16(w), S::F16(b)) => S::F16(dw_launch(dev, &g, x, lx, w, lw, b, lb)?),
        (S::BF16(x), S::BF16(w), S::BF16(b)) => S::BF16(dw_launch(dev, &g, x, lx, w, lw, b, lb)?),
        _ => bail!("dwconv-nhwc: needs x, w, b of one dtype among f32, f16, bf16"),
    };
    let out = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((out, Shape::from((n, oh, ow, c))))
}

struct DwGeom {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    oh: usize,
    ow: usize,
    top: usize,
    left: usize,
}

/// Square kernels and strides with a register-tiled kernel in the PTX, and the output tile
/// width each was built with (`kadr_dw_k{K}_s{S}_t{TW}_*`).
fn dw_tiles(k: usize, s: usize, ow: usize) -> Option<usize> {
    match (k, s) {
        (7, 1) => Some(if ow % 8 != 0 && ow % 7 == 0 { 7 } else { 8 }),
        (3 | 5, 1) => Some(8),
        (3 | 5 | 7, 2) => Some(4),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn dw_launch<T: DeviceRepr + WithDType>(
    dev: &CudaDevice,
    g: &DwGeom,
    x: &CudaSlice<T>,
    lx: &Layout,
    w: &CudaSlice<T>,
    lw: &Layout,
    b: &CudaSlice<T>,
    lb: &Layout,
) -> Result<CudaSlice<T>> {
    let op = "dwconv-nhwc";
    let (xv, ox) = window(x, lx, op)?;
    let (wv, ow_) = window(w, lw, op)?;
    let (bv, ob) = window(b, lb, op)?;
    let el = g.n * g.oh * g.ow * g.c;
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { dev.alloc::<T>(el)? };
    if el == 0 {
        return Ok(out);
    }
    let dt = T::DTYPE.as_str();
    let (h, wd, c) = (as_i32(g.h, "H")?, as_i32(g.w, "W")?, as_i32(g.c, "C")?);
    let (oh, ow) = (as_i32(g.oh, "OH")?, as_i32(g.ow, "OW")?);
    let (top, left) = (as_i32(g.top, "pad")?, as_i32(g.left, "pad")?);
    let tiled = if g.kh == g.kw && g.c % 2 == 0 && ox % 2 == 0 && ow_ % 2 == 0 && ob % 2 == 0 {
        dw_tiles(g.kh, g.stride, g.ow)
    } else {
        None
    };
    match tiled {
        Some(tw) => {
            let tiles_w = g.ow.div_ceil(tw);
            let threads = g.n * g.oh * tiles_w * (g.c / 2);
            let total = threads as i64;
            let tiles = as_i32(tiles_w, "tiles")?;
            let name = format!("kadr_dw_k{}_s{}_t{tw}_{dt}", g.kh, g.stride);
            let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
            let mut args = func.builder();
            args.arg(&xv).arg(&wv).arg(&bv).arg(&mut out);
            args.arg(&h)
                .arg(&wd)
                .arg(&c)
                .arg(&oh)
                .arg(&ow)
                .arg(&top)
                .arg(&left);
            args.arg(&tiles).arg(&total);
            // SAFETY: argument list matches the kernel's signature; bounds checked above.
            unsafe { args.launch(cfg(blocks(threads, MAX_TILE_BLOCKS))) }.w()?;
        }
        None => {
            let total = el as i64;
            let (kh, kw, s) = (
                as_i32(g.kh, "KH")?,
                as_i32(g.kw, "KW")?,
                as_i32(g.stride, "stride")?,
            );
            let name = format!("kadr_dw_generic_{dt}");
            let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
            let mut args = func.builder();
            args.arg(&xv).arg(&wv).arg(&bv).arg(&mut out);
            args.arg(&h)
                .arg(&wd)
                .arg(&c)
                .arg(&oh)
                .arg(&ow)
                .arg(&kh)
                .arg(&kw)
                .arg(&s);
            args.arg(&top).arg(&left).arg(&total);
            // SAFETY: argument list matches the kernel's signature; bounds checked above.
            unsafe { args.launch(cfg(blocks(el, MAX_BLOCKS))) }.w()?;
        }
    }
    Ok(out)
}

/// Elements per vector for the elementwise kernels: 16 bytes when the last dim and every start
/// offset are multiples of it, else 1.
fn vec_width<T>(n: usize, offsets: &[usize]) -> usize {
    let v = 16 / std::mem::size_of::<T>();
    if n % v == 0 && offsets.iter().all(|o| o % v == 0) {
        v
    } else {
        1
    }
}

/// The last dim of `l` and a check that `lb` is a bias over it.
fn bias_dim(l: &Layout, lb: &Layout, op: &str) -> Result<usize> {
    let n = *l.shape().dims().last().unwrap_or(&1);
    if lb.shape().elem_count() != n || (n == 0 && l.shape().elem_count() != 0) {
        bail!(
            "{op}: bias {:?} does not match the last dim of {:?}",
            lb.shape(),
            l.shape()
        )
    }
    Ok(n)
}

/// y [.., N] (any rank, last dim N), b [N]: gelu_erf(y + b) (exact erf GELU), same shape.
pub(crate) fn bias_gelu(
    y: &CudaStorage,
    ly: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let n = bias_dim(ly, lb, "bias-gelu")?;
    let dev = &y.device;
    let slice = match (&y.slice, &b.slice) {
        (S::F32(y), S::F32(b)) => S::F32(bias_gelu_launch(dev, n, y, ly, b, lb)?),
        (S::F16(y), S::F16(b)) => S::F16(bias_gelu_launch(dev, n, y, ly, b, lb)?),
        (S::BF16(y), S::BF16(b)) => S::BF16(bias_gelu_launch(dev, n, y, ly, b, lb)?),
        _ => bail!("bias-gelu: needs y, b of one dtype among f32, f16, bf16"),
    };
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        ly.shape().clone(),
    ))
}

fn bias_gelu_launch<T: DeviceRepr + WithDType>(
    dev: &CudaDevice,
    n: usize,
    y: &CudaSlice<T>,
    ly: &Layout,
    b: &CudaSlice<T>,
    lb: &Layout,
) -> Result<CudaSlice<T>> {
    let (yv, oy) = window(y, ly, "bias-gelu")?;
    let (bv, ob) = window(b, lb, "bias-gelu")?;
    let el = ly.shape().elem_count();
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { dev.alloc::<T>(el)? };
    if el == 0 {
        return Ok(out);
    }
    let v = vec_width::<T>(n, &[oy, ob]);
    let nvec = (el / v) as i64;
    let ncols = as_i32(n, "last dim")?;
    let func = dev.get_or_load_custom_func(
        &format!("kadr_bias_gelu_v{v}_{}", T::DTYPE.as_str()),
        MODULE,
        PTX,
    )?;
    let mut args = func.builder();
    args.arg(&yv).arg(&bv).arg(&mut out).arg(&nvec).arg(&ncols);
    // SAFETY: argument list matches the kernel's signature.
    unsafe { args.launch(cfg(blocks(el / v, MAX_BLOCKS))) }.w()?;
    Ok(out)
}

/// x, y same shape [.., C], b [C]: x + y + b, same shape.
pub(crate) fn residual_bias(
    x: &CudaStorage,
    lx: &Layout,
    y: &CudaStorage,
    ly: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)> {
    if lx.shape() != ly.shape() {
        bail!(
            "residual-bias: x {:?} and y {:?} differ",
            lx.shape(),
            ly.shape()
        )
    }
    let n = bias_dim(ly, lb, "residual-bias")?;
    let dev = &x.device;
    let slice = match (&x.slice, &y.slice, &b.slice) {
        (S::F32(x), S::F32(y), S::F32(b)) => S::F32(residual_launch(dev, n, x, lx, y, ly, b, lb)?),
        (S::F16(x), S::F16(y), S::F16(b)) => S::F16(residual_launch(dev, n, x, lx, y, ly, b, lb)?),
        (S::BF16(x), S::BF16(y), S::BF16(b)) => {
            S::BF16(residual_launch(dev, n, x, lx, y, ly, b, lb)?)
        }
        _ => bail!("residual-bias: needs x, y, b of one dtype among f32, f16, bf16"),
    };
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        ly.shape().clone(),
    ))
}

#[allow(clippy::too_many_arguments)]
fn residual_launch<T: DeviceRepr + WithDType>(
    dev: &CudaDevice,
    n: usize,
    x: &CudaSlice<T>,
    lx: &Layout,
    y: &CudaSlice<T>,
    ly: &Layout,
    b: &CudaSlice<T>,
    lb: &Layout,
) -> Result<CudaSlice<T>> {
    let (xv, ox) = window(x, lx, "residual-bias")?;
    let (yv, oy) = window(y, ly, "residual-bias")?;
    let (bv, ob) = window(b, lb, "residual-bias")?;
    let el = ly.shape().elem_count();
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { dev.alloc::<T>(el)? };
    if el == 0 {
        return Ok(out);
    }
    let v = vec_width::<T>(n, &[ox, oy, ob]);
    let nvec = (el / v) as i64;
    let ncols = as_i32(n, "last dim")?;
    let func = dev.get_or_load_custom_func(
        &format!("kadr_residual_bias_v{v}_{}", T::DTYPE.as_str()),
        MODULE,
        PTX,
    )?;
    let mut args = func.builder();
    args.arg(&xv)
        .arg(&yv)
        .arg(&bv)
        .arg(&mut out)
        .arg(&nvec)
        .arg(&ncols);
    // SAFETY: argument list matches the kernel's signature.
    unsafe { args.launch(cfg(blocks(el / v, MAX_BLOCKS))) }.w()?;
    Ok(out)
}
