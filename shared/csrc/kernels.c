/* Tandem's native fp32 kernels (AVX-512), called through ctypes (shared/native.py): the
 * matmul of every projection, the residual add with the RMSNorm after it, and the MLP's
 * silu(gate) * up.
 *
 * The matmul: y = x W^T (+ b) for row-major x [M, K] and W [N, K].
 *
 * W is packed once into panels of NP = 64 output columns, k-major ([N/NP][K][NP], zero
 * columns past N), so the kernel reads it as one sequential stream. A micro-tile of up to
 * MR = 6 rows of x by one panel keeps 6 x 64 sums in 24 registers: per k, four vector
 * loads of W, one broadcast of each row's x[k], 24 fused multiply-adds. (Measured on
 * SmolLM2's weights against oneDNN: 64 x 6 streams one row ~20 % faster and matches it
 * at 32 and 512 rows, where 32 x 6 was 0.7x at 512 rows.)
 *
 * Batch invariance: every output element is one chain of fused multiply-adds over
 * k = 0 .. K-1 from zero, then + bias, whatever M is and wherever its row falls in a tile;
 * so a row's result never depends on the rows beside it (a verify pass of k + 1 rows
 * computes what k + 1 one-row decode steps compute).
 *
 * Threads (torch's OpenMP runtime) split the panels; rows go in blocks of MB that stay in
 * L2 beside the panel being read, so each thread streams its share of the weights once for
 * every MB rows.
 */
#include <math.h>

#include "kernels.h"

enum {
    NV = 4,       /* vectors of 16 columns per panel */
    NP = 16 * NV, /* columns per panel */
    MR = 6,       /* most rows of x per micro-tile */
    MB = 96,      /* rows of x per block */
};

int64_t tandem_panel_width(void) { return NP; }

void tandem_pack_f32(const float *w, float *packed, int64_t N, int64_t K, int threads) {
    int64_t panels = (N + NP - 1) / NP;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < panels; p++)
        for (int64_t c = 0; c < NP; c++) {
            int64_t n = p * NP + c;
            float *column = packed + p * K * NP + c;
            for (int64_t k = 0; k < K; k++) column[k * NP] = n < N ? w[n * K + k] : 0.0f;
        }
}

/* ``next``: this tile's share of the next panel, fetched into L2 one k-row (NP floats)
 * every ``every`` steps of k: spread over all of a panel's tiles, the stream from memory
 * runs while they compute (fetching it all in one tile, the rest computed with memory
 * idle: 32 rows took 69 ms over SmolLM2's weights against 55 ms spread, 16 rows 51 / 41). */
static inline __attribute__((always_inline)) void
micro(const float *x, const float *panel, const float *bias, float *y, int64_t K,
      int64_t N, int64_t columns, const int mr, const float *next, int64_t every) {
    __m512 acc[MR][NV];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    int64_t countdown = every;
    for (int64_t k = 0; k < K; k++) {
        __m512 w[NV];
        for (int v = 0; v < NV; v++) w[v] = _mm512_loadu_ps(panel + k * NP + 16 * v);
        if (next && --countdown == 0) {
            countdown = every;
            for (int v = 0; v < NV; v++) _mm_prefetch((const char *)(next + 16 * v), _MM_HINT_T1);
            next += NP;
        }
        for (int i = 0; i < mr; i++) {
            __m512 xv = _mm512_set1_ps(x[i * K + k]);
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(xv, w[v], acc[i][v]);
        }
    }
    for (int v = 0; v < NV; v++) {
        int64_t left = columns - 16 * v; /* columns of this vector that exist */
        __mmask16 mask = first_lanes(left);
        __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + 16 * v) : _mm512_setzero_ps();
        for (int i = 0; i < mr; i++)
            _mm512_mask_storeu_ps(y + i * N + 16 * v, mask, _mm512_add_ps(acc[i][v], b));
    }
}

void tandem_matmul_team(const float *x, const float *packed, const float *bias, float *y,
                        int64_t M, int64_t N, int64_t K) {
    int64_t panels = (N + NP - 1) / NP;
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        int64_t m_end = M - m0 < MB ? M : m0 + MB;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            int64_t n = p * NP, columns = N - n < NP ? N - n : NP;
            const float *panel = packed + p * K * NP;
            const float *b = bias ? bias + n : 0;
            /* The block's rows in as few tiles as MR allows, evened out (32 rows: 6 6 5 5
             * 5 5, not 6 6 6 6 6 2): a short tile pays a panel read for little work. */
            int64_t rows = m_end - m0, tiles = (rows + MR - 1) / MR;
            for (int64_t t = 0, m = m0; t < tiles; t++) {
                int mr = (int)(rows / tiles + (t < rows % tiles));
                const float *xm = x + m * K;
                float *ym = y + m * N + n;
                /* Tile t fetches share t of the next panel (likely this thread's next). */
                const float *next = p + 1 < panels ? panel + K * NP + t * K / tiles * NP : 0;
                switch (mr) {
                case 1: micro(xm, panel, b, ym, K, N, columns, 1, next, tiles); break;
                case 2: micro(xm, panel, b, ym, K, N, columns, 2, next, tiles); break;
                case 3: micro(xm, panel, b, ym, K, N, columns, 3, next, tiles); break;
                case 4: micro(xm, panel, b, ym, K, N, columns, 4, next, tiles); break;
                case 5: micro(xm, panel, b, ym, K, N, columns, 5, next, tiles); break;
                default: micro(xm, panel, b, ym, K, N, columns, 6, next, tiles); break;
                }
                m += mr;
            }
        }
    }
}

void tandem_matmul_f32(const float *x, const float *packed, const float *bias, float *y,
                       int64_t M, int64_t N, int64_t K, int threads) {
#pragma omp parallel num_threads(threads)
    {
        unsigned int csr = flush_subnormals();
        tandem_matmul_team(x, packed, bias, y, M, N, K);
        _mm_setcsr(csr);
    }
}

/* x [M, D] += delta (when given), then y = x / sqrt(mean(x^2) + eps) * w, row by row:
 * a decoder's residual add and the RMSNorm after it in one pass. Each row's sum of
 * squares is sixteen lane sums and one fixed reduction, so a row's result does not depend
 * on the rows beside it. */
void tandem_add_rms_norm_team(float *x, const float *delta, const float *w, float *y,
                              int64_t M, int64_t D, float eps) {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        float *row = x + m * D;
        __m512 squares = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
            __mmask16 mask = first_lanes(D - d);
            __m512 v = _mm512_maskz_loadu_ps(mask, row + d);
            if (delta) {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, delta + m * D + d));
                _mm512_mask_storeu_ps(row + d, mask, v);
            }
            squares = _mm512_fmadd_ps(v, v, squares);
        }
        float scale = 1.0f / sqrtf(_mm512_reduce_add_ps(squares) / (float)D + eps);
        __m512 s = _mm512_set1_ps(scale);
        for (int64_t d = 0; d < D; d += 16) {
            __mmask16 mask = first_lanes(D - d);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + d), s);
            _mm512_mask_storeu_ps(y + m * D + d, mask,
                                  _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mask, w + d)));
        }
    }
}

/* Run on the calling thread alone (a decode step's rows are few). */
void tandem_add_rms_norm_f32(float *x, const float *delta, const float *w, float *y,
                             int64_t M, int64_t D, float eps) {
    unsigned int csr = flush_subnormals();
    tandem_add_rms_norm_team(x, delta, w, y, M, D, eps);
    _mm_setcsr(csr);
}

/* y [M, F] = silu(gate) * up for the fused projection's rows gate_up [M, 2F] = (gate | up),
 * silu(g) = g / (1 + e^-g) as torch computes it (its rounding steps; exp within an ulp). */
void tandem_silu_mul_team(const float *gate_up, float *y, int64_t M, int64_t F) {
    int64_t chunks = (F + 255) / 256; /* rows split in chunks of 256 columns */
#pragma omp for schedule(static)
    for (int64_t item = 0; item < M * chunks; item++) {
        int64_t m = item / chunks, f0 = item % chunks * 256;
        const float *gate = gate_up + m * 2 * F, *up = gate + F;
        for (int64_t f = f0; f < F && f < f0 + 256; f += 16) {
            __mmask16 mask = first_lanes(F - f);
            __m512 g = _mm512_maskz_loadu_ps(mask, gate + f);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
            __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_mask_storeu_ps(y + m * F + f, mask,
                                  _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(mask, up + f)));
        }
    }
}

void tandem_silu_mul_f32(const float *gate_up, float *y, int64_t M, int64_t F, int threads) {
#pragma omp parallel num_threads(M * F >= 16384 ? threads : 1)
    {
        unsigned int csr = flush_subnormals();
        tandem_silu_mul_team(gate_up, y, M, F);
        _mm_setcsr(csr);
    }
}
