/* Fused elementwise kernels for the training forward (rlft/models/fused/llama_forward.py), forward and backward,
 * in float32 or bfloat16 (stored as uint16: the top half of a float32, rounded to nearest even).
 *
 * Why: with bfloat16 matmuls near the CPU's bf16 rate, what is left of a training step is elementwise
 * work over activations larger than the caches — RoPE in torch is ~8 ops forward and as many backward
 * (casts, two multiplies, a concatenation, a negation, an add), SwiGLU's backward 4, a norm and its
 * cast 6. Each op is a full pass over memory; each function here is one pass.
 *
 * Built like decode.c (rlft/models/kernels/__init__.py), checked against the torch ops it replaces.
 * `T` below is the storage type of activations: float (f32) or uint16_t (bf16); math is in float32.
 */
#include <string.h>

#include "vec.h"

typedef uint16_t vh __attribute__((vector_size(2 * VL)));
typedef uint16_t vh_unaligned __attribute__((vector_size(2 * VL), aligned(2)));

static inline vf load_bf16(const uint16_t *p) {
    return (vf)(__builtin_convertvector(*(const vh_unaligned *)p, vu) << 16);
}
static inline void store_bf16(uint16_t *p, vf x) {
    const vu bits = (vu)x;
    vu rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const vi nan = x != x;
    rounded = (rounded & (vu)~nan) | (0x7FC0u & (vu)nan);
    *(vh_unaligned *)p = __builtin_convertvector(rounded, vh);
}
static inline float scalar_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}
static inline uint16_t scalar_to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if (x != x) return 0x7FC0;
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
static inline float load1_f32(const float *p) { return *p; }
static inline void store1_f32(float *p, float x) { *p = x; }
static inline float load1_bf16(const uint16_t *p) { return scalar_bf16(*p); }
static inline void store1_bf16(uint16_t *p, float x) { *p = scalar_to_bf16(x); }


/* ---- RoPE (HF half-split layout) over q and k, with v passed through -------------------------------
 * qkv (N, (H + 2·Hkv)·D) rows [q | k | v]; cs (N, D) = [cos_0 … cos_{D/2−1} | sin_0 … sin_{D/2−1}] of each
 * row's position. Forward: out_qk (N, H + Hkv, D) with, per head and j < D/2,
 *   out_j = x_j·c_j − x_{j+D/2}·s_j,   out_{j+D/2} = x_{j+D/2}·c_j + x_j·s_j,
 * and out_v (N, Hkv·D) = v. Backward (the transposed rotation): from grad_qk and grad_v, write the
 * whole grad_qkv row,  g_j = d_j·c_j + d_{j+D/2}·s_j,  g_{j+D/2} = d_{j+D/2}·c_j − d_j·s_j. */
#define ROPE(NAME, T, LOAD, STORE, LOAD1, STORE1)                                                          \
    void NAME##_fwd(const T *qkv, const float *cs, T *out_qk, T *out_v, int N, int H, int Hkv, int D,     \
                    int threads) {                                                                        \
        const int half = D / 2, rot = H + Hkv;                                                            \
        const long row = (long)(H + 2 * Hkv) * D;                                                         \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int n = 0; n < N; n++) {   \
            const T *src = qkv + n * row;                                                                 \
            const float *c = cs + (long)n * D, *s = c + half;                                             \
            T *dst = out_qk + (long)n * rot * D;                                                          \
            for (int h = 0; h < rot; h++) {                                                               \
                const T *x = src + (long)h * D;                                                           \
                T *y = dst + (long)h * D;                                                                 \
                int j = 0;                                                                                \
                for (; j + VL <= half; j += VL) {                                                         \
                    const vf a = LOAD(x + j), b = LOAD(x + j + half);                                     \
                    const vf cj = vload(c + j), sj = vload(s + j);                                  \
                    STORE(y + j, a * cj - b * sj);                                                        \
                    STORE(y + j + half, b * cj + a * sj);                                                 \
                }                                                                                         \
                for (; j < half; j++) {                                                                   \
                    const float a = LOAD1(x + j), b = LOAD1(x + j + half);                                \
                    STORE1(y + j, a * c[j] - b * s[j]);                                                   \
                    STORE1(y + j + half, b * c[j] + a * s[j]);                                            \
                }                                                                                         \
            }                                                                                             \
            memcpy(out_v + (long)n * Hkv * D, src + (long)rot * D, sizeof(T) * (size_t)Hkv * D);          \
        }                                                                                                 \
    }                                                                                                     \
    void NAME##_bwd(const T *grad_qk, const T *grad_v, const float *cs, T *grad_qkv, int N, int H,       \
                    int Hkv, int D, int threads) {                                                        \
        const int half = D / 2, rot = H + Hkv;                                                            \
        const long row = (long)(H + 2 * Hkv) * D;                                                         \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int n = 0; n < N; n++) {   \
            T *dst = grad_qkv + n * row;                                                                  \
            const float *c = cs + (long)n * D, *s = c + half;                                             \
            const T *src = grad_qk + (long)n * rot * D;                                                   \
            for (int h = 0; h < rot; h++) {                                                               \
                const T *d = src + (long)h * D;                                                           \
                T *g = dst + (long)h * D;                                                                 \
                int j = 0;                                                                                \
                for (; j + VL <= half; j += VL) {                                                         \
                    const vf a = LOAD(d + j), b = LOAD(d + j + half);                                     \
                    const vf cj = vload(c + j), sj = vload(s + j);                                  \
                    STORE(g + j, a * cj + b * sj);                                                        \
                    STORE(g + j + half, b * cj - a * sj);                                                 \
                }                                                                                         \
                for (; j < half; j++) {                                                                   \
                    const float a = LOAD1(d + j), b = LOAD1(d + j + half);                                \
                    STORE1(g + j, a * c[j] + b * s[j]);                                                   \
                    STORE1(g + j + half, b * c[j] - a * s[j]);                                            \
                }                                                                                         \
            }                                                                                             \
            memcpy(dst + (long)rot * D, grad_v + (long)n * Hkv * D, sizeof(T) * (size_t)Hkv * D);         \
        }                                                                                                 \
    }
ROPE(rlft_rope_f32, float, vload, vstore, load1_f32, store1_f32)
ROPE(rlft_rope_bf16, uint16_t, load_bf16, store_bf16, load1_bf16, store1_bf16)

/* ---- SwiGLU --------------------------------------------------------------------------------------------
 * gate_up (N, 2I) rows [g | u]. Forward: y = silu(g)·u, silu(g) = g·σ(g). Backward from dy:
 *   dg = dy·u·σ(g)·(1 + g·(1 − σ(g))),   du = dy·silu(g),   written as grad_gate_up (N, 2I). */
#define SWIGLU(NAME, T, LOAD, STORE, LOAD1, STORE1)                                                       \
    void NAME##_fwd(const T *gate_up, T *y, int N, int I, int threads) {                                  \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int n = 0; n < N; n++) {   \
            const T *g = gate_up + (long)n * 2 * I, *u = g + I;                                           \
            T *o = y + (long)n * I;                                                                       \
            int j = 0;                                                                                    \
            for (; j + VL <= I; j += VL) {                                                                \
                const vf gv = LOAD(g + j);                                                                \
                STORE(o + j, gv / (1.0f + vexp(-gv)) * LOAD(u + j));                                      \
            }                                                                                             \
            for (; j < I; j++) {                                                                          \
                const float gv = LOAD1(g + j);                                                            \
                STORE1(o + j, gv / (1.0f + expf(-gv)) * LOAD1(u + j));                                    \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    void NAME##_bwd(const T *gate_up, const T *dy, T *grad, int N, int I, int threads) {                  \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int n = 0; n < N; n++) {   \
            const T *g = gate_up + (long)n * 2 * I, *u = g + I, *d = dy + (long)n * I;                    \
            T *dg = grad + (long)n * 2 * I, *du = dg + I;                                                 \
            int j = 0;                                                                                    \
            for (; j + VL <= I; j += VL) {                                                                \
                const vf gv = LOAD(g + j), dv = LOAD(d + j);                                              \
                const vf sig = 1.0f / (1.0f + vexp(-gv));                                                 \
                STORE(dg + j, dv * LOAD(u + j) * sig * (1.0f + gv * (1.0f - sig)));                       \
                STORE(du + j, dv * gv * sig);                                                             \
            }                                                                                             \
            for (; j < I; j++) {                                                                          \
                const float gv = LOAD1(g + j), dv = LOAD1(d + j);                                         \
                const float sig = 1.0f / (1.0f + expf(-gv));                                              \
                STORE1(dg + j, dv * LOAD1(u + j) * sig * (1.0f + gv * (1.0f - sig)));                     \
                STORE1(du + j, dv * gv * sig);                                                            \
            }                                                                                             \
        }                                                                                                 \
    }
SWIGLU(rlft_swiglu_f32, float, vload, vstore, load1_f32, store1_f32)
SWIGLU(rlft_swiglu_bf16, uint16_t, load_bf16, store_bf16, load1_bf16, store1_bf16)

/* ---- RMSNorm without weight, float32 in, T out ------------------------------------------------------------
 * Forward: r = 1/√(mean(x²) + eps) per row, y = x·r (stored as T), r saved. Backward from dy (T):
 *   dx = r·(dy − y·mean(dy·y))   with y = x·r recomputed, float32. */
#define RMSNORM(NAME, T, LOAD, STORE, LOAD1, STORE1)                                                      \
    void NAME##_fwd(const float *x, T *y, float *rstd, int N, int W, float eps, int threads) {            \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int n = 0; n < N; n++) {   \
            const float *xr = x + (long)n * W;                                                            \
            T *yr = y + (long)n * W;                                                                      \
            vf acc = vsplat(0.0f);                                                                        \
            float ss = 0.0f;                                                                              \
            int j = 0;                                                                                    \
            for (; j + VL <= W; j += VL) {                                                                \
                const vf v = vload(xr + j);                                                            \
                acc += v * v;                                                                             \
            }                                                                                             \
            for (; j < W; j++) ss += xr[j] * xr[j];                                                       \
            for (int i = 0; i < VL; i++) ss += acc[i];                                                    \
            const float r = 1.0f / sqrtf(ss / (float)W + eps);                                            \
            rstd[n] = r;                                                                                  \
            for (j = 0; j + VL <= W; j += VL) STORE(yr + j, vload(xr + j) * r);                        \
            for (; j < W; j++) STORE1(yr + j, xr[j] * r);                                                 \
        }                                                                                                 \
    }                                                                                                     \
    void NAME##_bwd(const float *x, const float *rstd, const T *dy, float *dx, int N, int W,              \
                    int threads) {                                                                        \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int n = 0; n < N; n++) {   \
            const float *xr = x + (long)n * W, r = rstd[n];                                               \
            const T *dr = dy + (long)n * W;                                                               \
            float *o = dx + (long)n * W;                                                                  \
            vf acc = vsplat(0.0f);                                                                        \
            float dot = 0.0f;                                                                             \
            int j = 0;                                                                                    \
            for (; j + VL <= W; j += VL) acc += LOAD(dr + j) * vload(xr + j);                          \
            for (; j < W; j++) dot += LOAD1(dr + j) * xr[j];                                              \
            for (int i = 0; i < VL; i++) dot += acc[i];                                                   \
            const float m = dot * r * r / (float)W; /* y·mean(dy·y) = x·m */                              \
            for (j = 0; j + VL <= W; j += VL) vstore(o + j, r * (LOAD(dr + j) - vload(xr + j) * m)); \
            for (; j < W; j++) o[j] = r * (LOAD1(dr + j) - xr[j] * m);                                    \
        }                                                                                                 \
    }
RMSNORM(rlft_rms_norm_f32, float, vload, vstore, load1_f32, store1_f32)
RMSNORM(rlft_rms_norm_bf16, uint16_t, load_bf16, store_bf16, load1_bf16, store1_bf16)
