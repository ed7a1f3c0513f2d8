/* Tandem's native fp32 attention for decode and verify steps (AVX-512), called through
 * ctypes (shared/native.py), beside the matmul in kernels.c.
 *
 * Two passes a layer replace ~15 small torch ops (RoPE's five, two KV index_copy_, two
 * index_select gathers, SDPA and its reshapes), each of which costs more at one row than
 * its arithmetic:
 *
 *   tandem_rope_kv_write_f32   rotate every token's q and k heads (RoPE as transformers
 *                              computes it), write k and v into the paged cache at the
 *                              token's slot, and return the rotated q;
 *   tandem_paged_attention_f32 each query row's attention over its sequence's keys
 *                              0 .. n-1, read in place through the block table (no gather).
 *
 * Batch invariance: a row's output is computed from its own query, keys and values in an
 * order fixed by its key count alone (dot products over hd in one chain, softmax sums in
 * 16 lanes reduced in one fixed order), so it never depends on the rows beside it: a
 * verify pass of k + 1 rows computes what k + 1 decode steps compute.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "kernels.h"

/* out = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1): two products then a
 * sum, each rounded, as torch computes it (the build turns off contraction into FMAs). */
static void rope_head(const float *x, const float *cos, const float *sin, float *out,
                      int64_t hd) {
    int64_t half = hd / 2;
    if (half % 16) { /* small heads: lane by lane */
        for (int64_t i = 0; i < hd; i++) {
            float r = i < half ? -x[i + half] : x[i - half];
            float a = x[i] * cos[i], b = r * sin[i];
            out[i] = a + b;
        }
        return;
    }
    for (int64_t i = 0; i < hd; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        /* rotate_half at i..i+15: -x[i + half] in the first half, x[i - half] after. */
        __m512 r = i < half ? _mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(x + i + half))
                            : _mm512_loadu_ps(x + i - half);
        __m512 a = _mm512_mul_ps(v, _mm512_loadu_ps(cos + i));
        __m512 b = _mm512_mul_ps(r, _mm512_loadu_ps(sin + i));
        _mm512_storeu_ps(out + i, _mm512_add_ps(a, b));
    }
}

/* qkv [T, (H + 2 Hkv) hd] rows as the fused projection wrote them; cos, sin [T, hd];
 * caches [slots, Hkv, hd] of this layer; q_out [T, H, hd]. */
void tandem_rope_kv_write_team(const float *qkv, const float *cos, const float *sin,
                               float *k_cache, float *v_cache, const int64_t *slots,
                               float *q_out, int64_t T, int64_t H, int64_t Hkv, int64_t hd) {
    int64_t width = (H + 2 * Hkv) * hd;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        const float *row = qkv + t * width, *c = cos + t * hd, *s = sin + t * hd;
        for (int64_t h = 0; h < H; h++) rope_head(row + h * hd, c, s, q_out + (t * H + h) * hd, hd);
        float *k_row = k_cache + slots[t] * Hkv * hd, *v_row = v_cache + slots[t] * Hkv * hd;
        for (int64_t h = 0; h < Hkv; h++) rope_head(row + (H + h) * hd, c, s, k_row + h * hd, hd);
        const float *v = row + (H + Hkv) * hd;
        for (int64_t i = 0; i < Hkv * hd; i++) v_row[i] = v[i];
    }
}

void tandem_rope_kv_write_f32(const float *qkv, const float *cos, const float *sin,
                              float *k_cache, float *v_cache, const int64_t *slots,
                              float *q_out, int64_t T, int64_t H, int64_t Hkv, int64_t hd,
                              int threads) {
#pragma omp parallel num_threads(threads)
    {
        unsigned int csr = flush_subnormals();
        tandem_rope_kv_write_team(qkv, cos, sin, k_cache, v_cache, slots, q_out, T, H, Hkv, hd);
        _mm_setcsr(csr);
    }
}

enum { MAX_GROUP = 16 }; /* most query heads sharing one KV head handled together */

/* Heads h0 .. h0+G-1 (all reading KV head kvh) of one query row over keys 0 .. n-1,
 * key j at slot blocks[j / block_size] * block_size + j % block_size. */
static void attend(const float *q, const float *k_cache, const float *v_cache,
                   const int64_t *blocks, int64_t block_size, int64_t n, int64_t Hkv,
                   int64_t kvh, int64_t G, int64_t hd, float scale, float *scores,
                   float *out) {
    int64_t stride = Hkv * hd; /* floats from one slot to the next */
    float best[MAX_GROUP];
    for (int64_t g = 0; g < G; g++) best[g] = -INFINITY;
    for (int64_t j0 = 0; j0 < n; j0 += block_size) {
        const float *k_block = k_cache + blocks[j0 / block_size] * block_size * stride
                               + kvh * hd;
        for (int64_t j = j0; j < n && j < j0 + block_size; j++) {
            const float *k = k_block + (j - j0) * stride;
            for (int64_t g = 0; g < G; g++) {
                const float *qg = q + g * hd;
                __m512 acc = _mm512_setzero_ps();
                for (int64_t i = 0; i < hd; i += 16)
                    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(first_lanes(hd - i), qg + i),
                                          _mm512_maskz_loadu_ps(first_lanes(hd - i), k + i), acc);
                float s = _mm512_reduce_add_ps(acc) * scale;
                scores[g * n + j] = s;
                if (s > best[g]) best[g] = s;
            }
        }
    }
    for (int64_t g = 0; g < G; g++) { /* scores -> unnormalised probabilities, their sum */
        float *sg = scores + g * n;
        __m512 total = _mm512_setzero_ps(), top = _mm512_set1_ps(best[g]);
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 m = first_lanes(n - j);
            __m512 p = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sg + j), top));
            p = _mm512_maskz_mov_ps(m, p);
            _mm512_mask_storeu_ps(sg + j, m, p);
            total = _mm512_add_ps(total, p);
        }
        best[g] = 1.0f / _mm512_reduce_add_ps(total); /* now the normaliser */
    }
    for (int64_t g = 0; g < G; g++) /* out = sum_j p_j v_j / sum_j p_j, 64 columns a pass */
        for (int64_t i = 0; i < hd; i += 64) {
            __mmask16 m[4];
            __m512 acc[4];
            for (int v = 0; v < 4; v++) {
                m[v] = first_lanes(hd - i - 16 * v);
                acc[v] = _mm512_setzero_ps();
            }
            const float *sg = scores + g * n;
            for (int64_t j0 = 0; j0 < n; j0 += block_size) {
                const float *v_block = v_cache + blocks[j0 / block_size] * block_size * stride
                                       + kvh * hd + i;
                for (int64_t j = j0; j < n && j < j0 + block_size; j++) {
                    const float *vj = v_block + (j - j0) * stride;
                    __m512 p = _mm512_set1_ps(sg[j]);
                    for (int v = 0; v < 4; v++)
                        acc[v] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(m[v], vj + 16 * v),
                                                 acc[v]);
                }
            }
            __m512 inverse = _mm512_set1_ps(best[g]);
            for (int v = 0; v < 4; v++)
                _mm512_mask_storeu_ps(out + g * hd + i + 16 * v, m[v],
                                      _mm512_mul_ps(acc[v], inverse));
        }
}

/* q [T, H, hd] rotated; out [T, H, hd]; for each of the R query rows: its token index
 * rows[r], its sequence's block table at tables + table_start[r], its key count keys[r]
 * (its position + 1). Heads h read KV head h / (H / Hkv), as in grouped-query attention. */
void tandem_paged_attention_team(const float *q, const float *k_cache, const float *v_cache,
                                 const int64_t *tables, int64_t block_size,
                                 const int64_t *rows, const int64_t *table_start,
                                 const int64_t *keys, float *out, int64_t R, int64_t H,
                                 int64_t Hkv, int64_t hd, float scale) {
    int64_t G = H / Hkv, most = 0, threads = omp_get_num_threads();
    for (int64_t r = 0; r < R; r++) most = keys[r] > most ? keys[r] : most;
    /* Work items: (row, KV head) when there are enough to keep every thread busy, else
     * (row, head) — the same arithmetic per head either way. */
    int64_t per_item = R * Hkv >= 4 * threads && G <= MAX_GROUP ? G : 1;
    int64_t items = R * H / per_item;
    float *scores = malloc((size_t)(per_item * most) * sizeof(float));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; item++) {
        int64_t r = item / (H / per_item), h0 = item % (H / per_item) * per_item;
        int64_t t = rows[r];
        attend(q + (t * H + h0) * hd, k_cache, v_cache, tables + table_start[r], block_size,
               keys[r], Hkv, h0 / G, per_item, hd, scale, scores, out + (t * H + h0) * hd);
    }
    free(scores);
}

void tandem_paged_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                                const int64_t *tables, int64_t block_size,
                                const int64_t *rows, const int64_t *table_start,
                                const int64_t *keys, float *out, int64_t R, int64_t H,
                                int64_t Hkv, int64_t hd, float scale, int threads) {
#pragma omp parallel num_threads(threads)
    {
        unsigned int csr = flush_subnormals();
        tandem_paged_attention_team(q, k_cache, v_cache, tables, block_size, rows,
                                    table_start, keys, out, R, H, Hkv, hd, scale);
        _mm_setcsr(csr);
    }
}
