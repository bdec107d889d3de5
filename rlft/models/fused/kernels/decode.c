/* One-token decode kernels for the fused Llama decoder (rlft/models/fused/llama_decoder.py), float32.
 *
 * Why C: at the batch sizes RL samples with on a CPU, a small model's decode step is a few dozen
 * tiny ops per layer, and their fixed costs dominate. torch's batched matmul runs q·Kᵀ and p·V for a
 * single query row per head at about 10 GFLOP/s (256 separate 1×D×L products); oneDNN's prepacked
 * linear spends ~13 µs per call before any arithmetic; each further op (RoPE multiply, cache write,
 * softmax, norm, SwiGLU) costs a dispatch and a pass over memory. Each function below does the work
 * of one or several torch ops in one pass, parallel with OpenMP (the runtime torch itself loads).
 *
 * Built and loaded by rlft/models/kernels/__init__.py (cc -O3 -march=native, cached by source hash);
 * checked against the torch ops they replace when loaded, and everything falls back to those ops when
 * no compiler is available. C with GCC/Clang vector extensions (portable across x86 and ARM, no
 * intrinsics) and OpenMP pragmas; no -ffast-math, so float semantics are IEEE throughout.
 */
#include "vec.h"

/* Rotate one head: (x_2j, x_2j+1) are the real and imaginary parts of one RoPE pair (the q/k weight
 * rows are stored pair-interleaved), multiplied by e^{iθ_j·pos} = cis[2j] + i·cis[2j+1]. Element d
 * of the result goes to dst[d·stride] (stride = cache capacity writes a key into its column). */
static inline void rope_head(float *dst, long stride, const float *src, const float *cis, int half) {
    for (int j = 0; j < half; j++) {
        float re = src[2 * j], im = src[2 * j + 1], c = cis[2 * j], s = cis[2 * j + 1];
        dst[2 * j * stride] = re * c - im * s;
        dst[(2 * j + 1) * stride] = re * s + im * c;
    }
}

/* Attention of one query head over positions [0, L) of its cache head: Kt (D, cap) keys transposed,
 * V (cap, D), D a multiple of VL. Scores are computed VL positions at a time, s += q_d·Kt[d, l:l+VL]
 * over d, so no loop carries a dependency from one position to the next and none has a remainder
 * (cap is a multiple of VL); the last block's positions past L (garbage keys) get score -inf before
 * the softmax and are never read from V. Inlined with D a compile-time constant (see attend_any),
 * so the output row's D/VL vectors stay in registers across the loop over positions. */
static inline __attribute__((always_inline)) void attend_head(
    const float *restrict q, const float *restrict Kt, const float *restrict V,
    const float *restrict bias, float *restrict scores, float *restrict o, int L, long cap, const int D) {
    const int Lp = (L + VL - 1) / VL * VL;
    vf m = vsplat(-INFINITY);
    for (int l = 0; l < Lp; l += VL) {
        vf s = bias ? vload(bias + l) : vsplat(0.0f);
        for (int d = 0; d < D; d++) s += q[d] * vload(Kt + d * cap + l);
        vstore(scores + l, s);
    }
    for (int l = L; l < Lp; l++) scores[l] = -INFINITY;
    for (int l = 0; l < Lp; l += VL) m = vmax(m, vload(scores + l));
    const float top = hmax(m);
    vf sum = vsplat(0.0f);
    for (int l = 0; l < Lp; l += VL) {
        const vf p = vexp(vload(scores + l) - top);
        vstore(scores + l, p);
        sum += p;
    }
    vf acc[D / VL];
    for (int j = 0; j < D / VL; j++) acc[j] = vsplat(0.0f);
    for (int l = 0; l < L; l++) {
        const float p = scores[l];
        for (int j = 0; j < D / VL; j++) acc[j] += p * vload(V + (long)l * D + j * VL);
    }
    const float inv = 1.0f / hsum(sum);
    for (int j = 0; j < D / VL; j++) vstore(o + j * VL, acc[j] * inv);
}

/* The same for any D, one position at a time (head sizes that are not a multiple of VL). */
static void attend_head_scalar(const float *q, const float *Kt, const float *V, const float *bias,
                               float *scores, float *o, int L, long cap, int D) {
    float top = -INFINITY, sum = 0.0f;
    for (int l = 0; l < L; l++) {
        float s = bias ? bias[l] : 0.0f;
        for (int d = 0; d < D; d++) s += q[d] * Kt[d * cap + l];
        scores[l] = s;
        top = s > top ? s : top;
    }
    for (int l = 0; l < L; l++) {
        scores[l] = expf(scores[l] - top);
        sum += scores[l];
    }
    for (int d = 0; d < D; d++) {
        float a = 0.0f;
        for (int l = 0; l < L; l++) a += scores[l] * V[(long)l * D + d];
        o[d] = a / sum;
    }
}

static void attend_any(const float *q, const float *Kt, const float *V, const float *bias, float *scores,
                       float *o, int L, long cap, int D) {
    switch (D) { /* the common head sizes get their own unrolled copy */
    case 32: attend_head(q, Kt, V, bias, scores, o, L, cap, 32); break;
    case 64: attend_head(q, Kt, V, bias, scores, o, L, cap, 64); break;
    case 128: attend_head(q, Kt, V, bias, scores, o, L, cap, 128); break;
    default: attend_head_scalar(q, Kt, V, bias, scores, o, L, cap, D);
    }
}

/* Ask for the next head's keys and values while this one computes: the cache of a step is larger
 * than the L2, and the transposed keys are D short rows the hardware prefetcher does not follow. */
static inline void prefetch_head(const float *Kt, const float *V, int L, long cap, int D) {
    for (int d = 0; d < D; d++)
        for (int l = 0; l < L; l += 16) __builtin_prefetch(Kt + d * cap + l);
    for (long i = 0; i < (long)L * D; i += 16) __builtin_prefetch(V + i);
}

/* Attention of one new token per row over a static KV cache, with RoPE and the cache write fused in.
 *
 *   qkv       (B, (H + 2·Hkv)·D)  this step's projections [q | k | v]; q and k pair-interleaved,
 *                                 the 1/√D scale already in q
 *   cis       (B, D/2, 2)         cos/sin of each row's position
 *   kc        (B, Hkv, D, cap)    keys, transposed; the rotated key is written at position `pos`;
 *                                 cap is a multiple of VL
 *   vc        (B, Hkv, cap, D)    values; the value is written at position `pos`
 *   key_bias  (B·Hkv, cap)        additive mask (0 or float32 min for padding), or NULL
 *   out       (B, H·D)            softmax(q·Kᵀ + bias)·V over positions [0, pos], per head
 *
 * Query head h reads key/value head h / (H/Hkv) (grouped-query attention). */
void rlft_decode_attention(const float *qkv, const float *cis, float *kc, float *vc,
                           const float *key_bias, float *out, int B, int H, int Hkv, int D, int cap,
                           int pos, int threads) {
    const int half = D / 2, group = H / Hkv, L = pos + 1;
    const long row = (long)(H + 2 * Hkv) * D;
#pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(sizeof(float) * (size_t)cap);
        float *q = malloc(sizeof(float) * (size_t)D);
#pragma omp for schedule(static)
        for (int t = 0; t < B * Hkv; t++) {
            const int b = t / Hkv, kh = t % Hkv;
            const float *src = qkv + (long)b * row, *c = cis + (long)b * D;
            float *Kt = kc + (long)t * D * cap, *V = vc + (long)t * cap * D;
            if (t + 1 < B * Hkv) prefetch_head(Kt + (long)D * cap, V + (long)cap * D, L, cap, D);
            rope_head(Kt + pos, cap, src + (long)(H + kh) * D, c, half);
            memcpy(V + (long)pos * D, src + (long)(H + Hkv + kh) * D, sizeof(float) * (size_t)D);
            const float *bias = key_bias ? key_bias + (long)t * cap : NULL;
            for (int g = 0; g < group; g++) {
                const int h = kh * group + g;
                rope_head(q, 1, src + (long)h * D, c, half);
                attend_any(q, Kt, V, bias, scores, out + (long)b * H * D + (long)h * D, L, cap, D);
            }
        }
        free(q);
        free(scores);
    }
}

/* Residual add and RMSNorm of each row, in one pass: x += delta (skipped when delta is NULL), then
 * out = x / sqrt(mean(x²) + eps) — F.rms_norm without a weight (the fused decoder folds each norm
 * weight into the matmul after it). x, delta, out are (rows, width). Rows are split over threads only
 * when there are enough of them to pay for waking the threads. */
void rlft_add_rms_norm(float *x, const float *delta, float *out, int rows, int width, float eps,
                       int threads) {
    if ((long)rows * width < (1L << 16)) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        float *xr = x + (long)r * width, *orow = out + (long)r * width;
        const float *dr = delta ? delta + (long)r * width : NULL;
        float ss = 0.0f;
        if (dr) {
#pragma omp simd reduction(+ : ss)
            for (int j = 0; j < width; j++) {
                xr[j] += dr[j];
                ss += xr[j] * xr[j];
            }
        } else {
#pragma omp simd reduction(+ : ss)
            for (int j = 0; j < width; j++) ss += xr[j] * xr[j];
        }
        const float inv = 1.0f / sqrtf(ss / (float)width + eps);
#pragma omp simd
        for (int j = 0; j < width; j++) orow[j] = xr[j] * inv;
    }
}

/* SwiGLU of each row of gate_up (rows, 2·inter) = [gate | up]: out = silu(gate) ⊙ up with
 * silu(g) = g / (1 + e^{-g}), out (rows, inter). */
void rlft_swiglu(const float *gate_up, float *out, int rows, int inter, int threads) {
    if ((long)rows * inter < (1L << 16)) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *g = gate_up + (long)r * 2 * inter, *u = g + inter;
        float *o = out + (long)r * inter;
        int j = 0;
        for (; j + VL <= inter; j += VL) {
            const vf gv = vload(g + j);
            vstore(o + j, gv / (1.0f + vexp(-gv)) * vload(u + j));
        }
        for (; j < inter; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

/* y = x·Wᵀ + bias for the small matmuls of a decode step (a few dozen rows), W prepacked.
 *
 * oneDNN's linear spends ~13 µs per call on bookkeeping here (primitive lookup, descriptors), as long
 * as a whole 64×128×128 product takes; this loop has none. Wᵀ is packed in panels of PANEL = NR·VL
 * output columns, (N_padded / PANEL, K, PANEL), so each step over k reads one contiguous PANEL-wide
 * row of weights; a tile of MR rows × PANEL columns is accumulated in MR·NR vector registers (the
 * register-blocked microkernel of BLIS/GotoBLAS). Tiles are split over threads. */
#define MR 8
#define NR 2
#define PANEL (NR * VL)

static inline __attribute__((always_inline)) void linear_tile(
    const float *restrict x, long K, const float *restrict wp, const float *restrict bias,
    float *restrict y, long N, int cols, const int rows) {
    vf acc[MR][NR];
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = bias ? vload(bias + j * VL) : vsplat(0.0f);
    for (long k = 0; k < K; k++) {
        vf w[NR];
        for (int j = 0; j < NR; j++) w[j] = vload(wp + k * PANEL + j * VL);
        for (int r = 0; r < rows; r++) {
            const float a = x[r * K + k];
            for (int j = 0; j < NR; j++) acc[r][j] += a * w[j];
        }
    }
    for (int r = 0; r < rows; r++) {
        if (cols == PANEL) {
            for (int j = 0; j < NR; j++) vstore(y + r * N + j * VL, acc[r][j]);
        } else { /* the last panel of an N that is not a multiple of PANEL */
            float tmp[PANEL];
            for (int j = 0; j < NR; j++) vstore(tmp + j * VL, acc[r][j]);
            memcpy(y + r * N, tmp, sizeof(float) * (size_t)cols);
        }
    }
}

/* x (M, K), wp (ceil(N / PANEL), K, PANEL), bias (ceil(N / PANEL)·PANEL) or NULL, y (M, N). */
void rlft_linear(const float *x, const float *wp, const float *bias, float *y, int M, int N, int K,
                 int threads) {
    const int panels = (N + PANEL - 1) / PANEL, tiles = (M + MR - 1) / MR;
    if ((long)M * N * K < (1L << 18)) threads = 1;
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
    for (int p = 0; p < panels; p++)
        for (int t = 0; t < tiles; t++) {
            const int m0 = t * MR, n0 = p * PANEL;
            const int rows = M - m0 < MR ? M - m0 : MR, cols = N - n0 < PANEL ? N - n0 : PANEL;
            const float *xs = x + (long)m0 * K, *ws = wp + (long)p * K * PANEL;
            const float *bs = bias ? bias + n0 : NULL;
            float *ys = y + (long)m0 * N + n0;
            switch (rows) { /* a copy of the tile loop for each row count keeps acc in registers */
            case 8: linear_tile(xs, K, ws, bs, ys, N, cols, 8); break;
            case 7: linear_tile(xs, K, ws, bs, ys, N, cols, 7); break;
            case 6: linear_tile(xs, K, ws, bs, ys, N, cols, 6); break;
            case 5: linear_tile(xs, K, ws, bs, ys, N, cols, 5); break;
            case 4: linear_tile(xs, K, ws, bs, ys, N, cols, 4); break;
            case 3: linear_tile(xs, K, ws, bs, ys, N, cols, 3); break;
            case 2: linear_tile(xs, K, ws, bs, ys, N, cols, 2); break;
            default: linear_tile(xs, K, ws, bs, ys, N, cols, 1); break;
            }
        }
}
