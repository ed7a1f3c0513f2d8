/* A decode or verify step's decoder layers in one OpenMP parallel region (fp32).
 *
 * At one row a layer's ten kernels each take tens of microseconds, and op by op each is
 * also a Python call, a ctypes call and an OpenMP fork and join. Here the team of threads
 * runs every kernel of every layer in turn, with one barrier between kernels. Each kernel is the same function the per-op path calls
 * (kernels.c, attention.c), in the same order, so the result is bit for bit the same.
 *
 * Steps whose queries all attend through the paged kernel come here (decode and verify
 * rows); a step with a prefill chunk goes op by op (its matmuls dominate anyway).
 */
#include "kernels.h"

/* The model's weights, packed for tandem_matmul_team; one pointer per layer in each list. */
struct tandem_decoder {
    int64_t layers, D, H, Hkv, hd, F;
    float eps, scale;
    const float *const *input_norm, *const *qkv, *const *qkv_bias, *const *o,
        *const *post_norm, *const *gate_up, *const *down;
};

/* x [T, D], the residual stream, is updated in place. cos, sin [T, hd]; caches [layers,
 * slots, Hkv, hd] (layer_stride floats apart), written at slots [T]; the paged rows as in
 * tandem_paged_attention_team (here every token is one). scratch holds
 * T * (2 D + (3 H + 2 Hkv) hd + 3 F) floats. */
void tandem_decoder_layers_f32(const struct tandem_decoder *m, float *x, const float *cos,
                               const float *sin, float *k_cache, float *v_cache,
                               int64_t layer_stride, const int64_t *slots,
                               const int64_t *tables, int64_t block_size,
                               const int64_t *rows, const int64_t *table_start,
                               const int64_t *keys, int64_t T, float *scratch, int threads) {
    int64_t D = m->D, H = m->H, Hkv = m->Hkv, hd = m->hd, F = m->F;
    int64_t qkv_width = (H + 2 * Hkv) * hd;
    float *h = scratch, *delta = h + T * D, *qkv = delta + T * D, *q = qkv + T * qkv_width;
    float *attended = q + T * H * hd, *gate_up = attended + T * H * hd;
    float *act = gate_up + T * 2 * F;
#pragma omp parallel num_threads(threads)
    {
        unsigned int csr = flush_subnormals();
        for (int64_t l = 0; l < m->layers; l++) {
            float *k_layer = k_cache + l * layer_stride, *v_layer = v_cache + l * layer_stride;
            tandem_add_rms_norm_team(x, l ? delta : 0, m->input_norm[l], h, T, D, m->eps);
            tandem_matmul_team(h, m->qkv[l], m->qkv_bias[l], qkv, T, qkv_width, D);
            tandem_rope_kv_write_team(qkv, cos, sin, k_layer, v_layer, slots, q, T, H, Hkv, hd);
            tandem_paged_attention_team(q, k_layer, v_layer, tables, block_size, rows,
                                        table_start, keys, attended, T, H, Hkv, hd, m->scale);
            tandem_matmul_team(attended, m->o[l], 0, delta, T, D, H * hd);
            tandem_add_rms_norm_team(x, delta, m->post_norm[l], h, T, D, m->eps);
            tandem_matmul_team(h, m->gate_up[l], 0, gate_up, T, 2 * F, D);
            tandem_silu_mul_team(gate_up, act, T, F);
            tandem_matmul_team(act, m->down[l], 0, delta, T, D, F);
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < T * D; i++) x[i] += delta[i];
        _mm_setcsr(csr);
    }
}
