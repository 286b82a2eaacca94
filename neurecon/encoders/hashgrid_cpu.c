/* The hash encoding's three primitives for CPUs (encoder.backend=cpu): see hashgrid_cpu.py.
 *
 * Same layout, hash and corner conventions as the PyTorch backend (hashgrid_ops.py), which is
 * the reference these kernels are tested against. Plain C with OpenMP, no Python or torch
 * headers, so that it compiles in about a second on first use; called through ctypes with the
 * tensors' data pointers (float32 / int64, contiguous).
 *
 * u (N, 3) in [0, 1]; table (T, F); out, g_out (N, L, F); dir (N, 3) or NULL.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define MAXF 8

typedef struct {
    const float *scale;   /* (L,) position scale */
    const int64_t *res;   /* (L,) grid resolution (dense levels) */
    const int64_t *size;  /* (L,) table entries */
    const int64_t *offset;/* (L,) first entry in the shared table */
    int64_t n_dense;      /* levels [0, n_dense) are indexed densely, the finer ones hashed */
} levels_t;

/* Corner rows, trilinear factors (1 - f, f per axis) of point p at level l. */
static inline void cell(const float *p, const levels_t *lv, int64_t l, int64_t idx[8],
                        float ax[3][2]) {
    const float s = lv->scale[l];
    int64_t b[3];
    for (int a = 0; a < 3; a++) {
        /* Sanitised here, so that no caller can forget: NaN fails both comparisons and becomes
         * 0, +-inf and huge values clamp to [0, 1]. (int64_t)NaN is INT64_MIN, and % of it is a
         * negative row: a diverging run's NaN positions reach the kernels before its guard. */
        const float v = (p[a] > 0.0f) ? (p[a] < 1.0f ? p[a] : 1.0f) : 0.0f;
        /* as torch: u * scale + 0.5 in float32, two roundings (no FMA: -ffp-contract=off) */
        float pos = v * s;
        pos = pos + 0.5f;
        float fl = floorf(pos);
        b[a] = (int64_t)fl;
        float fr = pos - fl;
        ax[a][0] = 1.0f - fr;
        ax[a][1] = fr;
    }
    const int64_t size = lv->size[l], off = lv->offset[l];
    if (l < lv->n_dense) {
        const int64_t r = lv->res[l];
        for (int c = 0; c < 8; c++) {
            int64_t cx = b[0] + (c >> 2), cy = b[1] + ((c >> 1) & 1), cz = b[2] + (c & 1);
            idx[c] = (cx + cy * r + cz * r * r) % size + off;
        }
    } else {
        /* tiny-cuda-nn's uint32 XOR hash; hashed tables are powers of two */
        const uint32_t mask = (uint32_t)(size - 1);
        for (int c = 0; c < 8; c++) {
            uint32_t cx = (uint32_t)(b[0] + (c >> 2));
            uint32_t cy = (uint32_t)(b[1] + ((c >> 1) & 1)) * 2654435761u;
            uint32_t cz = (uint32_t)(b[2] + (c & 1)) * 805459861u;
            idx[c] = (int64_t)((cx ^ cy ^ cz) & mask) + off;
        }
    }
}

/* Corner weights: trilinear, or (dir != NULL) their derivative along dir. Corner c = 4x+2y+z. */
static inline void weights(float ax[3][2], float scale, const float *dir, float w[8]) {
    for (int c = 0; c < 8; c++) {
        const int x = c >> 2, y = (c >> 1) & 1, z = c & 1;
        if (dir) {
            const float sx = x ? scale : -scale, sy = y ? scale : -scale,
                        sz = z ? scale : -scale;
            w[c] = dir[0] * (sx * ax[1][y] * ax[2][z]) + dir[1] * (ax[0][x] * sy * ax[2][z]) +
                   dir[2] * (ax[0][x] * ax[1][y] * sz);
        } else {
            w[c] = ax[0][x] * ax[1][y] * ax[2][z];
        }
    }
}

/* out[n, l, :] = sum_c w_c(u_n) table[idx_c(u_n)] (or the directional weights).
 * Level by level: one level's rows (at most 2^19 x F floats) stay in cache while every point
 * reads them; point by point, all levels' rows compete for it (measured 3x slower). */
void hg_encode(const float *u, const float *table, const float *dir, float *out,
               const float *scale, const int64_t *res, const int64_t *size,
               const int64_t *offset, int64_t n_dense, int64_t N, int64_t L, int64_t F,
               int n_threads) {
    const levels_t lv = {scale, res, size, offset, n_dense};
#pragma omp parallel num_threads(n_threads)
    for (int64_t l = 0; l < L; l++) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            int64_t idx[8];
            float ax[3][2], w[8], acc[MAXF] = {0};
            cell(u + 3 * n, &lv, l, idx, ax);
            weights(ax, scale[l], dir ? dir + 3 * n : 0, w);
            for (int c = 0; c < 8; c++) {
                const float *row = table + idx[c] * F;
                for (int64_t f = 0; f < F; f++) acc[f] += w[c] * row[f];
            }
            float *o = out + (n * L + l) * F;
            for (int64_t f = 0; f < F; f++) o[f] = acc[f];
        }
    }
}

/* dL/du_a = sum_l sum_c (dw_c/du_a) <g_out[n, l], table[idx_c]>; level by level, as encode. */
void hg_input_grad(const float *u, const float *table, const float *g_out, float *g_u,
                   const float *scale, const int64_t *res, const int64_t *size,
                   const int64_t *offset, int64_t n_dense, int64_t N, int64_t L, int64_t F,
                   int n_threads) {
    const levels_t lv = {scale, res, size, offset, n_dense};
    memset(g_u, 0, (size_t)(3 * N) * sizeof(float));
#pragma omp parallel num_threads(n_threads)
    for (int64_t l = 0; l < L; l++) {
        const float s = scale[l];
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            int64_t idx[8];
            float ax[3][2], gx = 0.f, gy = 0.f, gz = 0.f;
            cell(u + 3 * n, &lv, l, idx, ax);
            const float *g = g_out + (n * L + l) * F;
            for (int c = 0; c < 8; c++) {
                const int x = c >> 2, y = (c >> 1) & 1, z = c & 1;
                const float *row = table + idx[c] * F;
                float dot = 0.f;
                for (int64_t f = 0; f < F; f++) dot += row[f] * g[f];
                gx += (x ? s : -s) * ax[1][y] * ax[2][z] * dot;
                gy += ax[0][x] * (y ? s : -s) * ax[2][z] * dot;
                gz += ax[0][x] * ax[1][y] * (z ? s : -s) * dot;
            }
            g_u[3 * n] += gx;
            g_u[3 * n + 1] += gy;
            g_u[3 * n + 2] += gz;
        }
    }
}

/* The transpose of hg_encode: g_table[idx_c(u_n)] += w_c(u_n) g_out[n, l] (g_table is zeroed
 * here), with the trilinear weights or (dir != NULL) their derivative along dir. With table and
 * g_gout, also g_gout[n, l] = sum_c w_c table[idx_c] in the same pass (the double backward
 * needs both sums along dir, and they share each point's corners). Levels own disjoint parts of
 * the table, so threads split the levels and need no atomics. */
void hg_table_grad(const float *u, const float *table, const float *g_out, const float *dir,
                   float *g_table, float *g_gout, const float *scale, const int64_t *res,
                   const int64_t *size, const int64_t *offset, int64_t n_dense, int64_t N,
                   int64_t L, int64_t F, int n_threads) {
    const levels_t lv = {scale, res, size, offset, n_dense};
    const int also_encode = table != 0 && g_gout != 0;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int64_t l = 0; l < L; l++) {
        memset(g_table + offset[l] * F, 0, (size_t)(size[l] * F) * sizeof(float));
        for (int64_t n = 0; n < N; n++) {
            int64_t idx[8];
            float ax[3][2], w[8], acc[MAXF] = {0};
            cell(u + 3 * n, &lv, l, idx, ax);
            weights(ax, scale[l], dir ? dir + 3 * n : 0, w);
            const float *g = g_out + (n * L + l) * F;
            for (int c = 0; c < 8; c++) {
                float *grow = g_table + idx[c] * F;
                for (int64_t f = 0; f < F; f++) grow[f] += w[c] * g[f];
                if (also_encode) {
                    const float *row = table + idx[c] * F;
                    for (int64_t f = 0; f < F; f++) acc[f] += w[c] * row[f];
                }
            }
            if (also_encode) {
                float *o = g_gout + (n * L + l) * F;
                for (int64_t f = 0; f < F; f++) o[f] = acc[f];
            }
        }
    }
}
