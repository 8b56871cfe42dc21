// kadr's own CUDA kernels: the hot ops of a channels-last ConvNeXt (depthwise conv, bias + GELU,
// residual + bias). Compiled to PTX by server/build.rs (only with the `cuda` feature) and loaded
// through candle's `CudaDevice::get_or_load_custom_func` by server/src/models/cuda.rs.
//
// Every kernel exists for f32, f16 and bf16 (suffix _f32 / _f16 / _bf16) and computes in f32.
// All tensors are contiguous; the Rust side passes pointers already moved to their start offset.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Scalar / pair conversions.

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Two adjacent channels in one load/store (4 bytes for 16-bit types, 8 for f32).
template <typename T> struct Pair;
template <> struct Pair<float> {
    typedef float2 V;
    static __device__ __forceinline__ float2 f2(V v) { return v; }
    static __device__ __forceinline__ V make(float2 v) { return v; }
};
template <> struct Pair<__half> {
    typedef __half2 V;
    static __device__ __forceinline__ float2 f2(V v) { return __half22float2(v); }
    static __device__ __forceinline__ V make(float2 v) { return __float22half2_rn(v); }
};
template <> struct Pair<__nv_bfloat16> {
    typedef __nv_bfloat162 V;
    static __device__ __forceinline__ float2 f2(V v) { return __bfloat1622float2(v); }
    static __device__ __forceinline__ V make(float2 v) { return __float22bfloat162_rn(v); }
};

// ---------------------------------------------------------------------------------------------
// Depthwise convolution, channels-last.
//
// x [N,H,W,C], w [KH,KW,C], b [C] -> y [N,OH,OW,C].
// Fast kernel: one thread = one channel pair x TW consecutive output pixels of one output row.
// Threads are numbered channel pair fastest, so a warp reads/writes contiguous channels of the
// same pixels (coalesced 4-byte half2 accesses), and neighbouring warps of a block work on the
// neighbouring pixel tiles of the same rows (input rows shared through L1). Each input value of a
// kernel row is loaded once and used for every output of the tile it touches (TW*K multiply-adds
// per (TW-1)*S+K loads); the K weights of the current kernel row live in registers.

template <typename T, int K, int S, int TW>
__device__ __forceinline__ void dw_pair_tile(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
    int H, int W, int C, int OH, int OW, int pad_top, int pad_left, int tiles_w, long long total) {
    typedef typename Pair<T>::V V;
    const int C2 = C >> 1;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        long long r = t;
        const int c2 = (int)(r % C2); r /= C2;
        const int tile = (int)(r % tiles_w); r /= tiles_w;
        const int oy = (int)(r % OH);
        const int n = (int)(r / OH);
        const int ox0 = tile * TW;
        const int c = c2 * 2;

        const float2 bias = Pair<T>::f2(*reinterpret_cast<const V*>(b + c));
        float2 acc[TW];
#pragma unroll
        for (int i = 0; i < TW; ++i) acc[i] = bias;

        const int ix0 = ox0 * S - pad_left;
        const T* xn = x + (size_t)n * H * W * C + c;
        // Kernel rows stay a loop (the unrolled body is already ~K*TW FMAs); keeps the PTX small.
#pragma unroll 1
        for (int ky = 0; ky < K; ++ky) {
            const int iy = oy * S + ky - pad_top;
            if (iy < 0 || iy >= H) continue;
            float2 wk[K];
#pragma unroll
            for (int kx = 0; kx < K; ++kx)
                wk[kx] = Pair<T>::f2(__ldg(reinterpret_cast<const V*>(w + (size_t)(ky * K + kx) * C + c)));
            const T* xrow = xn + (size_t)iy * W * C;
            // Walk the (TW-1)*S+K input columns this tile touches once each.
#pragma unroll
            for (int j = 0; j < (TW - 1) * S + K; ++j) {
                const int ix = ix0 + j;
                float2 v = make_float2(0.f, 0.f);
                if (ix >= 0 && ix < W) v = Pair<T>::f2(__ldg(reinterpret_cast<const V*>(xrow + (size_t)ix * C)));
#pragma unroll
                for (int o = 0; o < TW; ++o) {
                    const int kx = j - o * S;
                    if (kx >= 0 && kx < K) {
                        acc[o].x = fmaf(wk[kx].x, v.x, acc[o].x);
                        acc[o].y = fmaf(wk[kx].y, v.y, acc[o].y);
                    }
                }
            }
        }
        T* yrow = y + (((size_t)n * OH + oy) * OW) * C + c;
#pragma unroll
        for (int o = 0; o < TW; ++o) {
            if (ox0 + o < OW) *reinterpret_cast<V*>(yrow + (size_t)(ox0 + o) * C) = Pair<T>::make(acc[o]);
        }
    }
}

// Any kernel size / stride / channel count: one thread = one output element.
template <typename T>
__device__ __forceinline__ void dw_generic(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
    int H, int W, int C, int OH, int OW, int KH, int KW, int S, int pad_top, int pad_left,
    long long total) {
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        long long r = t;
        const int c = (int)(r % C); r /= C;
        const int ox = (int)(r % OW); r /= OW;
        const int oy = (int)(r % OH);
        const int n = (int)(r / OH);
        float acc = to_f(b[c]);
        for (int ky = 0; ky < KH; ++ky) {
            const int iy = oy * S + ky - pad_top;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < KW; ++kx) {
                const int ix = ox * S + kx - pad_left;
                if (ix < 0 || ix >= W) continue;
                acc = fmaf(to_f(w[(ky * KW + kx) * C + c]),
                           to_f(x[(((size_t)n * H + iy) * W + ix) * C + c]), acc);
            }
        }
        y[t] = from_f<T>(acc);
    }
}

#define DW_FAST(TYPE, SUF, K, S, TW)                                                              \
    extern "C" __global__ void __launch_bounds__(256, 3) kadr_dw_k##K##_s##S##_t##TW##_##SUF(        \
        const TYPE* x, const TYPE* w, const TYPE* b, TYPE* y, int H, int W, int C, int OH,         \
        int OW, int pad_top, int pad_left, int tiles_w, long long total) {                       \
        dw_pair_tile<TYPE, K, S, TW>(x, w, b, y, H, W, C, OH, OW, pad_top, pad_left, tiles_w,     \
                                     total);                                                     \
    }

#define DW_ALL(TYPE, SUF)                                                                         \
    DW_FAST(TYPE, SUF, 7, 1, 7)                                                                   \
    DW_FAST(TYPE, SUF, 7, 1, 8)                                                                   \
    DW_FAST(TYPE, SUF, 7, 2, 4)                                                                   \
    DW_FAST(TYPE, SUF, 5, 1, 8)                                                                   \
    DW_FAST(TYPE, SUF, 5, 2, 4)                                                                   \
    DW_FAST(TYPE, SUF, 3, 1, 8)                                                                   \
    DW_FAST(TYPE, SUF, 3, 2, 4)                                                                   \
    extern "C" __global__ void kadr_dw_generic_##SUF(                                             \
        const TYPE* x, const TYPE* w, const TYPE* b, TYPE* y, int H, int W, int C, int OH,         \
        int OW, int KH, int KW, int S, int pad_top, int pad_left, long long total) {             \
        dw_generic<TYPE>(x, w, b, y, H, W, C, OH, OW, KH, KW, S, pad_top, pad_left, total);      \
    }

DW_ALL(float, f32)
DW_ALL(__half, f16)
DW_ALL(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------------------------
// Elementwise epilogues over [rows, N] with a bias of N, vectorised by VEC elements (16 bytes
// when the last dim and the start offsets allow it, else 1), grid-stride.

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Vec { T v[VEC]; };

__device__ __forceinline__ float gelu_erf(float v) {
    return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f));
}

template <typename T, int VEC>
__device__ __forceinline__ void bias_gelu_impl(const T* __restrict__ y, const T* __restrict__ b,
                                               T* __restrict__ out, long long nvec, int n) {
    typedef Vec<T, VEC> V;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nvec;
         i += (long long)gridDim.x * blockDim.x) {
        const int col = (int)((i * VEC) % n);
        const V yv = reinterpret_cast<const V*>(y)[i];
        const V bv = *reinterpret_cast<const V*>(b + col);
        V o;
#pragma unroll
        for (int k = 0; k < VEC; ++k) o.v[k] = from_f<T>(gelu_erf(to_f(yv.v[k]) + to_f(bv.v[k])));
        reinterpret_cast<V*>(out)[i] = o;
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void residual_bias_impl(const T* __restrict__ x, const T* __restrict__ y,
                                                   const T* __restrict__ b, T* __restrict__ out,
                                                   long long nvec, int n) {
    typedef Vec<T, VEC> V;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nvec;
         i += (long long)gridDim.x * blockDim.x) {
        const int col = (int)((i * VEC) % n);
        const V xv = reinterpret_cast<const V*>(x)[i];
        const V yv = reinterpret_cast<const V*>(y)[i];
        const V bv = *reinterpret_cast<const V*>(b + col);
        V o;
#pragma unroll
        for (int k = 0; k < VEC; ++k)
            o.v[k] = from_f<T>(to_f(xv.v[k]) + to_f(yv.v[k]) + to_f(bv.v[k]));
        reinterpret_cast<V*>(out)[i] = o;
    }
}

#define EW(TYPE, SUF, VEC)                                                                        \
    extern "C" __global__ void kadr_bias_gelu_v##VEC##_##SUF(const TYPE* y, const TYPE* b,        \
                                                             TYPE* out, long long nvec, int n) {  \
        bias_gelu_impl<TYPE, VEC>(y, b, out, nvec, n);                                            \
    }                                                                                             \
    extern "C" __global__ void kadr_residual_bias_v##VEC##_##SUF(                                 \
        const TYPE* x, const TYPE* y, const TYPE* b, TYPE* out, long long nvec, int n) {          \
        residual_bias_impl<TYPE, VEC>(x, y, b, out, nvec, n);                                     \
    }

EW(float, f32, 1)
EW(float, f32, 4)
EW(__half, f16, 1)
EW(__half, f16, 8)
EW(__nv_bfloat16, bf16, 1)
EW(__nv_bfloat16, bf16, 8)
