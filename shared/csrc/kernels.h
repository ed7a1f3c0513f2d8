/* Tandem's native fp32 kernels: what the sources share.
 *
 * Each kernel has a "team" form, run by every thread of an enclosing OpenMP parallel
 * region (its loops are worksharing loops ending in a barrier), and an exported form that
 * opens its own region around it. decoder.c runs a whole decode step's layers as teams
 * in one region: no fork and join, no Python, between the ~10 kernels of a layer.
 */
#ifndef TANDEM_KERNELS_H
#define TANDEM_KERNELS_H

#include <immintrin.h>
#include <stdint.h>

/* Subnormal operands take microcode assists (~150x slower; activations have some), so
 * every kernel's threads flush them to zero (DAZ, FTZ) and restore the mode after. */
static inline unsigned int flush_subnormals(void) {
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    return csr;
}

static inline __mmask16 first_lanes(int64_t n) { /* a mask of the first n (<= 16) lanes */
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* e^x: x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial (relative
 * error < 2e-7, about one ulp), scaled by 2^n; x clamped to [-87, 88] (normal results). */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x); /* ln2, high part */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);      /* ln2, low part */
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

void tandem_matmul_team(const float *x, const float *packed, const float *bias, float *y,
                        int64_t M, int64_t N, int64_t K);
void tandem_add_rms_norm_team(float *x, const float *delta, const float *w, float *y,
                              int64_t M, int64_t D, float eps);
void tandem_silu_mul_team(const float *gate_up, float *y, int64_t M, int64_t F);
void tandem_rope_kv_write_team(const float *qkv, const float *cos, const float *sin,
                               float *k_cache, float *v_cache, const int64_t *slots,
                               float *q_out, int64_t T, int64_t H, int64_t Hkv, int64_t hd);
void tandem_paged_attention_team(const float *q, const float *k_cache, const float *v_cache,
                                 const int64_t *tables, int64_t block_size,
                                 const int64_t *rows, const int64_t *table_start,
                                 const int64_t *keys, float *out, int64_t R, int64_t H,
                                 int64_t Hkv, int64_t hd, float scale);

#endif
