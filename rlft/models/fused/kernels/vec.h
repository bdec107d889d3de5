/* Float vectors shared by decode.c and train.c: VL lanes through GCC/Clang vector extensions
 * (AVX-512 registers where the CPU has them, two AVX2 or four SSE/NEON registers elsewhere), unaligned
 * loads and stores, lane-wise select/min/max, horizontal sum/max, and e^x. */
#ifndef RLFT_VEC_H
#define RLFT_VEC_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VL 16
typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));
typedef uint32_t vu __attribute__((vector_size(4 * VL)));
typedef float vf_unaligned __attribute__((vector_size(4 * VL), aligned(4)));

static inline vf vload(const float *p) { return *(const vf_unaligned *)p; }
static inline void vstore(float *p, vf x) { *(vf_unaligned *)p = x; }
static inline vf vsplat(float a) { return (vf){0} + a; }
static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
static inline float hsum(vf x) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += x[i];
    return s;
}
static inline float hmax(vf x) {
    float m = x[0];
    for (int i = 1; i < VL; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* e^x per lane, |relative error| ≲ 2e-7 on [-87.3, 88.4] (Cephes expf: x = n·ln2 + r, degree-6
 * polynomial for e^r on |r| ≤ ln2/2, 2^n built in the exponent bits). 0 below -87.3, where torch's
 * exp would give a denormal (< 1.2e-38) — far below anything a float32 softmax can see. */
static inline vf vexp(vf x) {
    const vi under = x < vsplat(-87.3365447504019f);
    x = vmin(vmax(x, vsplat(-87.3365447504019f)), vsplat(88.3762626647949f));
    /* floor(x·log2e + 1/2) by truncation of a positive number (x·log2e ≥ -126) */
    const vi ni = __builtin_convertvector(x * 1.44269504088896341f + 128.5f, vi) - 128;
    const vf n = __builtin_convertvector(ni, vf);
    const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vf y = p * (vf)((ni + 127) << 23);
    return (vf)((vi)y & ~under);
}

#endif
