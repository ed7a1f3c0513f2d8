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
 *                              0 .. n-1, read in place through the block table.
 *
 * Batch invariance: a row's output is computed from its own query, keys and values in an
 * order fixed by its key count alone, so it never depends on the rows beside it: a
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

enum {
    KT = 16,   /* keys per tile: one vector of scores */
    PAIRS = 6, /* (row, head) pairs sharing one pass over V: 6 x 4 accumulators */
};

/* The 16 lane sums of a[0..15], in one vector: lane l = a[l][0] + ... + a[l][15] (in an
 * order that depends on nothing but a[l]). */
static inline __m512 sum_lanes16(const __m512 a[16]) {
    __m512 u[8], v[4], w[2];
    for (int i = 0; i < 8; i++) /* 128-bit lane k: (a2i, a2i+1, a2i, a2i+1) partials */
        u[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) { /* 128-bit lane k: a4i .. a4i+3, lane k's part of each */
        __m512d x = _mm512_castps_pd(u[2 * i]), y = _mm512_castps_pd(u[2 * i + 1]);
        v[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++) /* the four 128-bit lanes summed in pairs */
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88),
                         _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

/* o[e][i .. i+63] = inv[e] * sum_j s[e n + j] v_j[i .. i+63] over keys j < most, for
 * ``count`` pairs at once: each V row is read once for all of them. ``count`` is a
 * constant at every call (a switch), so the 6 x 4 sums stay in registers; with a count
 * known only at run time they lived on the stack, a load and a store around every
 * multiply-add (8 ms of a 16 ms pass of 24 rows over 1,048 keys). */
static inline __attribute__((always_inline)) void
weigh_values(const float *v_cache, const int64_t *at, const float *s, int64_t n, int64_t most,
             int64_t hd, int64_t i, float *const o[PAIRS], const float inv[PAIRS],
             const int count) {
    __mmask16 m[4];
    __m512 acc[PAIRS][4];
    for (int v = 0; v < 4; v++) m[v] = first_lanes(hd - i - 16 * v);
    for (int e = 0; e < count; e++)
        for (int v = 0; v < 4; v++) acc[e][v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < most; j++) {
        const float *vj = v_cache + at[j] + i;
        __m512 vv[4];
        for (int v = 0; v < 4; v++) vv[v] = _mm512_maskz_loadu_ps(m[v], vj + 16 * v);
        for (int e = 0; e < count; e++) {
            __m512 w = _mm512_set1_ps(s[e * n + j]);
            for (int v = 0; v < 4; v++) acc[e][v] = _mm512_fmadd_ps(w, vv[v], acc[e][v]);
        }
    }
    for (int e = 0; e < count; e++) {
        __m512 scale = _mm512_set1_ps(inv[e]);
        for (int v = 0; v < 4; v++)
            _mm512_mask_storeu_ps(o[e] + i + 16 * v, m[v], _mm512_mul_ps(acc[e][v], scale));
    }
}

/* Query rows r0 .. r1-1 of one sequence (row r attends to keys 0 .. keys[r]-1) at heads
 * h0 .. h0+nh-1, all reading KV head kvh; key j's row sits at at[j] floats into a cache
 * (its slot times the slot stride). scores: nh (r1 - r0) (n + 1) floats.
 *
 * Scores come a tile of 16 keys at a time: 16 dot products in 16 vectors of lane sums,
 * then one transposing reduction (45 shuffles and adds, not 16 horizontal sums of ~10
 * each). The next tile's K rows and this tile's V rows are fetched ahead: a step's
 * weights stream through the caches between two layers, so a layer's KV comes from
 * memory. V is read once per 6 pairs. Every pair's sums run in an order fixed by its own
 * key count (keys past it weigh an exact zero), so it is invariant to its company. */
static void attend(const float *q, const float *k_cache, const float *v_cache,
                   const int64_t *at, const int64_t *rows, const int64_t *keys, int64_t r0,
                   int64_t r1, int64_t h0, int64_t nh, int64_t H, int64_t kvh, int64_t hd,
                   float scale, float *scores, float *out) {
    int64_t pairs = (r1 - r0) * nh, n = 0;
    for (int64_t r = r0; r < r1; r++) n = keys[r] > n ? keys[r] : n;
    float *inverse = scores + pairs * n;
    k_cache += kvh * hd;
    v_cache += kvh * hd;
    for (int64_t j0 = 0; j0 < n; j0 += KT) {
        const float *k[KT];
        for (int64_t l = 0; l < KT; l++) {
            int64_t j = j0 + l < n ? j0 + l : j0; /* lanes past n: any valid key */
            k[l] = k_cache + at[j];
            if (j0 + KT + l < n)
                for (int64_t i = 0; i < hd; i += 16)
                    _mm_prefetch((const char *)(k_cache + at[j0 + KT + l] + i), _MM_HINT_T0);
            if (j0 + l < n)
                for (int64_t i = 0; i < hd; i += 16)
                    _mm_prefetch((const char *)(v_cache + at[j0 + l] + i), _MM_HINT_T1);
        }
        for (int64_t p = 0; p < pairs; p++) {
            int64_t r = r0 + p / nh, live = keys[r] - j0;
            if (live <= 0) continue;
            const float *qp = q + (rows[r] * H + h0 + p % nh) * hd;
            __m512 a[KT];
            for (int l = 0; l < KT; l++) a[l] = _mm512_setzero_ps();
            for (int64_t i = 0; i < hd; i += 16) {
                __mmask16 m = first_lanes(hd - i);
                __m512 qi = _mm512_maskz_loadu_ps(m, qp + i);
                for (int l = 0; l < KT; l++)
                    a[l] = _mm512_fmadd_ps(qi, _mm512_maskz_loadu_ps(m, k[l] + i), a[l]);
            }
            _mm512_mask_storeu_ps(scores + p * n + j0, first_lanes(live),
                                  _mm512_mul_ps(sum_lanes16(a), _mm512_set1_ps(scale)));
        }
    }
    for (int64_t p = 0; p < pairs; p++) { /* scores -> e^(s - max), zero past the row */
        float *sp = scores + p * n;
        int64_t live = keys[r0 + p / nh];
        __m512 top = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();
        for (int64_t j = 0; j < live; j += 16)
            top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY),
                                                          first_lanes(live - j), sp + j));
        top = _mm512_set1_ps(_mm512_reduce_max_ps(top));
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 m = first_lanes(live - j);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sp + j), top));
            e = _mm512_maskz_mov_ps(m, e);
            _mm512_mask_storeu_ps(sp + j, first_lanes(n - j), e);
            total = _mm512_add_ps(total, e);
        }
        inverse[p] = 1.0f / _mm512_reduce_add_ps(total);
    }
    for (int64_t p0 = 0; p0 < pairs; p0 += PAIRS) { /* out = sum_j e_j v_j / sum_j e_j */
        int64_t count = pairs - p0 < PAIRS ? pairs - p0 : PAIRS, most = 0;
        float *o[PAIRS];
        float inv[PAIRS];
        for (int64_t e = 0; e < count; e++) {
            int64_t p = p0 + e, r = r0 + p / nh;
            most = keys[r] > most ? keys[r] : most;
            o[e] = out + (rows[r] * H + h0 + p % nh) * hd;
            inv[e] = inverse[p];
        }
        for (int64_t i = 0; i < hd; i += 64) {
            const float *s = scores + p0 * n;
            switch (count) {
            case 1: weigh_values(v_cache, at, s, n, most, hd, i, o, inv, 1); break;
            case 2: weigh_values(v_cache, at, s, n, most, hd, i, o, inv, 2); break;
            case 3: weigh_values(v_cache, at, s, n, most, hd, i, o, inv, 3); break;
            case 4: weigh_values(v_cache, at, s, n, most, hd, i, o, inv, 4); break;
            case 5: weigh_values(v_cache, at, s, n, most, hd, i, o, inv, 5); break;
            default: weigh_values(v_cache, at, s, n, most, hd, i, o, inv, 6); break;
            }
        }
    }
}

/* q [T, H, hd] rotated; out [T, H, hd]; for each of the R query rows: its token index
 * rows[r], its sequence's block table at tables + table_start[r], its key count keys[r]
 * (its position + 1); a sequence's rows are consecutive. Heads h read KV head h / (H /
 * Hkv), as in grouped-query attention. */
void tandem_paged_attention_team(const float *q, const float *k_cache, const float *v_cache,
                                 const int64_t *tables, int64_t block_size,
                                 const int64_t *rows, const int64_t *table_start,
                                 const int64_t *keys, float *out, int64_t R, int64_t H,
                                 int64_t Hkv, int64_t hd, float scale) {
    int64_t G = H / Hkv, threads = omp_get_num_threads(), sequences = 0, items = 0;
    int64_t *first = malloc((size_t)(R + 1) * sizeof(int64_t)); /* each sequence's first row */
    for (int64_t r = 0; r < R; r++)
        if (r == 0 || table_start[r] != table_start[r - 1]) first[sequences++] = r;
    first[sequences] = R;
    /* Work items: a sequence's rows r0 .. r1-1 at heads h0 .. h0+nh-1, the G heads
     * of one KV head, which share its K and V reads. Too few to keep every thread busy:
     * a verify pass's rows go in chunks, a lone decode row's heads one by one. The
     * arithmetic per (row, head) is the same whatever the item. */
    struct item { int64_t r0, r1, h0, nh; } *item =
        malloc((size_t)(sequences * H + R * Hkv) * sizeof(struct item));
    int64_t chunks = (2 * threads + sequences * Hkv - 1) / (sequences * Hkv);
    for (int64_t s = 0; s < sequences; s++) {
        int64_t r0 = first[s], n = first[s + 1] - r0, c = n < chunks ? n : chunks;
        int one_by_one = n == 1 && sequences * Hkv < 4 * threads;
        for (int64_t t = 0, r = r0; t < c; t++) {
            int64_t r1 = r + n / c + (t < n % c);
            for (int64_t h = 0; h < H; h += one_by_one ? 1 : G)
                item[items++] = (struct item){r, r1, h, one_by_one ? 1 : G};
            r = r1;
        }
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < items; i++) {
        int64_t r0 = item[i].r0, r1 = item[i].r1, h0 = item[i].h0, nh = item[i].nh, n = 0;
        const int64_t *blocks = tables + table_start[r0];
        for (int64_t r = r0; r < r1; r++) n = keys[r] > n ? keys[r] : n;
        /* Key j's offset in a cache, once for the item (no division per key). */
        int64_t *at = malloc((size_t)n * sizeof(int64_t));
        for (int64_t b = 0, j = 0; j < n; b++)
            for (int64_t o = 0; o < block_size && j < n; o++, j++)
                at[j] = (blocks[b] * block_size + o) * Hkv * hd;
        float *scores = malloc((size_t)(nh * (r1 - r0) * (n + 1)) * sizeof(float));
        attend(q, k_cache, v_cache, at, rows, keys, r0, r1, h0, nh, H, h0 / G, hd, scale,
               scores, out);
        free(scores);
        free(at);
    }
    free(item);
    free(first);
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
