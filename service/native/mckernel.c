/* The MC-dropout tile kernel in C: what service/mckernel.py's run_tiles computes, one tile at a time.
 *
 * Built by service/native/build.py (make install, the Docker build) into libmckernel.so, loaded with ctypes
 * (service/mcnative.py); the call releases the GIL. A tile is one image's passes (at most PASS_BLOCK) of one
 * request. Everything a tile computes depends on that tile alone, in a fixed order of operations, so a seeded
 * request's numbers are bit-identical whatever shares its call:
 *
 *   masks   the tile's own SFC64 stream (numpy's SFC64, seeded with splitmix64 of (seed, image, block), as
 *           service/mcrandom.py does): the same 64-bit words and the same lane / bit layout as the numpy kernel,
 *           so both kernels drop the same units;
 *   fc2     per pass, the bias plus the kept active units' rows of W' = v[k] * fc2_t[unit k], added in ascending
 *           unit order (a 0/1 mask times a row is the row or nothing: the dropped rows are skipped, not multiplied);
 *   layer 2 ReLU, then the pass's keep-mask; only units that are positive and kept reach fc3;
 *   fc3     bias plus h[j] * fc3_t[j] over those units, in four interleaved partial sums combined in a fixed order;
 *   sums    per pass softmax in float32 over the real classes, then sum p, p^2 and -p log p in float64.
 *
 * Requires AVX2 and FMA (service/mcnative.py checks the CPU before loading). Compiled with -ffp-contract=off, so
 * every product and sum rounds as written.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_NONE = 0, KIND_BIT = 1, KIND_THRESHOLD = 2 };

typedef struct {
    const float *fc2_t;  /* (h1, h2): row u is what hidden unit u adds to every fc2 output, times 1/keep1 */
    const float *fc2_bias; /* (h2,) */
    const float *fc3_t;  /* (h2, c_pad), times 1/keep2 */
    const float *fc3_bias; /* (c_pad,) */
    int64_t h1, h2, c_pad, classes;
    int64_t kind1, threshold1, kind2, threshold2;
} Net;

typedef struct {
    uint64_t seed;
    int64_t image, block, passes, active; /* active: K, the image's active hidden units */
    const int64_t *units;                 /* (K,) ascending */
    const float *values;                  /* (K,) */
} TileIn;

static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* numpy's SFC64 (random_raw) from a state (a, b, c, counter) */
static void sfc64_fill(uint64_t s[4], uint64_t *out, int64_t n) {
    uint64_t a = s[0], b = s[1], c = s[2], w = s[3];
    for (int64_t i = 0; i < n; i++) {
        const uint64_t tmp = a + b + w++;
        a = b ^ (b >> 11);
        b = c + (c << 3);
        c = ((c << 24) | (c >> 40)) + tmp;
        out[i] = tmp;
    }
}

static int64_t lane_words(int64_t kind, int64_t n) { /* layer 1: 8 int8 lanes (bit) or 4 int16 lanes a word */
    if (kind == KIND_BIT) return (n + 7) / 8;
    if (kind == KIND_THRESHOLD) return (n + 3) / 4;
    return 0;
}

static int64_t row_words(int64_t kind, int64_t width) { /* layer 2, per row: 64 bits or 4 int16 lanes a word */
    if (kind == KIND_BIT) return (width + 63) / 64;
    if (kind == KIND_THRESHOLD) return (width + 3) / 4;
    return 0;
}

/* acc[0:64] (8 registers) plus or minus the rows `rows` of wp at column `col`, in the order given */
#define ROWS_LOOP(OP)                                                  \
    for (int64_t i = 0; i < n; i++) {                                  \
        const float *row = wp + (int64_t)rows[i] * width + col;        \
        a0 = OP(a0, _mm256_loadu_ps(row));                             \
        a1 = OP(a1, _mm256_loadu_ps(row + 8));                         \
        a2 = OP(a2, _mm256_loadu_ps(row + 16));                        \
        a3 = OP(a3, _mm256_loadu_ps(row + 24));                        \
        a4 = OP(a4, _mm256_loadu_ps(row + 32));                        \
        a5 = OP(a5, _mm256_loadu_ps(row + 40));                        \
        a6 = OP(a6, _mm256_loadu_ps(row + 48));                        \
        a7 = OP(a7, _mm256_loadu_ps(row + 56));                        \
    }

static void chunk_sum(const float *start, const float *wp, const int32_t *rows, int64_t n, int64_t width,
                      int64_t col, int subtract, float *out) {
    __m256 a0 = _mm256_loadu_ps(start), a1 = _mm256_loadu_ps(start + 8), a2 = _mm256_loadu_ps(start + 16);
    __m256 a3 = _mm256_loadu_ps(start + 24), a4 = _mm256_loadu_ps(start + 32), a5 = _mm256_loadu_ps(start + 40);
    __m256 a6 = _mm256_loadu_ps(start + 48), a7 = _mm256_loadu_ps(start + 56);
    if (subtract) {
        ROWS_LOOP(_mm256_sub_ps)
    } else {
        ROWS_LOOP(_mm256_add_ps)
    }
    _mm256_storeu_ps(out, a0);
    _mm256_storeu_ps(out + 8, a1);
    _mm256_storeu_ps(out + 16, a2);
    _mm256_storeu_ps(out + 24, a3);
    _mm256_storeu_ps(out + 32, a4);
    _mm256_storeu_ps(out + 40, a5);
    _mm256_storeu_ps(out + 48, a6);
    _mm256_storeu_ps(out + 56, a7);
}

/* h[p, 0:h2] for every pass p of the tile: the bias plus the pass's kept rows of wp, added in ascending order;
 * or, when the pass drops fewer units than it keeps, the tile's all-units sum (bias plus every row, ascending)
 * minus its dropped rows, in ascending order. Either way the work is min(kept, dropped) rows per pass, and what
 * a pass computes depends only on its own mask. Column chunks outside, passes inside: a chunk of wp
 * (K x 64 floats) stays in L1 while every pass reads it. */
static void fc2_tile(const Net *net, const float *wp, const int32_t *kept, const int32_t *dropped,
                     const int64_t *counts, int64_t k, int64_t t, float *h, int32_t *all) {
    const int64_t width = net->h2;
    float total[64];
    for (int64_t i = 0; i < k; i++) all[i] = (int32_t)i;
    int64_t col = 0;
    for (; col + 64 <= width; col += 64) {
        const float *b = net->fc2_bias + col;
        chunk_sum(b, wp, all, k, width, col, 0, total);
        for (int64_t p = 0; p < t; p++) {
            const int64_t m = counts[p];
            if (m <= k - m)
                chunk_sum(b, wp, kept + p * k, m, width, col, 0, h + p * width + col);
            else
                chunk_sum(total, wp, dropped + p * k, k - m, width, col, 1, h + p * width + col);
        }
    }
    for (; col < width; col++) { /* widths that are not a multiple of 64: the same sums, one column at a time */
        float whole = net->fc2_bias[col];
        for (int64_t i = 0; i < k; i++) whole += wp[i * width + col];
        for (int64_t p = 0; p < t; p++) {
            const int64_t m = counts[p];
            float a;
            if (m <= k - m) {
                a = net->fc2_bias[col];
                for (int64_t i = 0; i < m; i++) a += wp[(int64_t)kept[p * k + i] * width + col];
            } else {
                a = whole;
                for (int64_t i = 0; i < k - m; i++) a -= wp[(int64_t)dropped[p * k + i] * width + col];
            }
            h[p * width + col] = a;
        }
    }
}

/* bit j of live[]: unit j of this pass is positive after fc2 and kept by its layer-2 mask (branch-free) */
static int64_t live_units(const Net *net, const float *h, const uint64_t *row, int32_t *live) {
    const int64_t width = net->h2;
    int64_t m = 0, j0 = 0;
    const __m256 zero = _mm256_setzero_ps();
    for (; j0 + 64 <= width; j0 += 64) {
        uint64_t bits = 0;
        for (int g = 0; g < 8; g++) {
            const __m256 v = _mm256_loadu_ps(h + j0 + 8 * g);
            bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ)) << (8 * g);
        }
        if (net->kind2 == KIND_BIT) {
            bits &= row[j0 >> 6];
        } else if (net->kind2 == KIND_THRESHOLD) {
            const int16_t *lanes = (const int16_t *)row + j0;
            uint64_t keep = 0;
            for (int b = 0; b < 64; b++) keep |= (uint64_t)(lanes[b] >= net->threshold2) << b;
            bits &= keep;
        }
        while (bits) {
            live[m++] = (int32_t)(j0 + __builtin_ctzll(bits));
            bits &= bits - 1;
        }
    }
    for (int64_t j = j0; j < width; j++) { /* a width that is not a multiple of 64: its last units */
        int keep = 1;
        if (net->kind2 == KIND_BIT) keep = (int)((row[j >> 6] >> (j & 63)) & 1);
        else if (net->kind2 == KIND_THRESHOLD) keep = ((const int16_t *)row)[j] >= net->threshold2;
        live[m] = (int32_t)j;
        m += (h[j] > 0.0f) & keep;
    }
    return m;
}

/* z[0:c_pad] = bias + sum over units j that are positive and kept of h[j] * fc3_t[j] */
static void fc3_pass(const Net *net, const float *h, const uint64_t *row, float *z, int32_t *live) {
    const int64_t width = net->h2, cp = net->c_pad;
    const int64_t m = live_units(net, h, row, live);
    (void)width;
    if (cp == 16) {
        __m256 lo[4], hi[4];
        lo[0] = _mm256_loadu_ps(net->fc3_bias), hi[0] = _mm256_loadu_ps(net->fc3_bias + 8);
        for (int q = 1; q < 4; q++) lo[q] = hi[q] = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 4 <= m; i += 4) {
            for (int q = 0; q < 4; q++) {
                const int32_t j = live[i + q];
                const __m256 v = _mm256_set1_ps(h[j]);
                const float *w = net->fc3_t + (int64_t)j * 16;
                lo[q] = _mm256_add_ps(lo[q], _mm256_mul_ps(v, _mm256_loadu_ps(w)));
                hi[q] = _mm256_add_ps(hi[q], _mm256_mul_ps(v, _mm256_loadu_ps(w + 8)));
            }
        }
        for (int q = 0; i < m; i++, q++) {
            const int32_t j = live[i];
            const __m256 v = _mm256_set1_ps(h[j]);
            const float *w = net->fc3_t + (int64_t)j * 16;
            lo[q] = _mm256_add_ps(lo[q], _mm256_mul_ps(v, _mm256_loadu_ps(w)));
            hi[q] = _mm256_add_ps(hi[q], _mm256_mul_ps(v, _mm256_loadu_ps(w + 8)));
        }
        _mm256_storeu_ps(z, _mm256_add_ps(_mm256_add_ps(lo[0], lo[1]), _mm256_add_ps(lo[2], lo[3])));
        _mm256_storeu_ps(z + 8, _mm256_add_ps(_mm256_add_ps(hi[0], hi[1]), _mm256_add_ps(hi[2], hi[3])));
        return;
    }
    for (int64_t c = 0; c < cp; c++) { /* other class counts: one column at a time, in unit order */
        float a = net->fc3_bias[c];
        for (int64_t i = 0; i < m; i++) a += h[live[i]] * net->fc3_t[(int64_t)live[i] * cp + c];
        z[c] = a;
    }
}

/* Partial sums per tile: sum_p, sum_p2 (n, classes) and sum_h (n,), float64. Returns 0, or -1 if out of memory. */
int mc_run_tiles(const Net *net, const TileIn *tiles, int64_t n, double *sum_p, double *sum_p2, double *sum_h) {
    const int64_t width = net->h2, classes = net->classes, wpr2 = row_words(net->kind2, width);
    int64_t max_k = 1, max_t = 1, max_words = 1;
    for (int64_t q = 0; q < n; q++) {
        const int64_t t = tiles[q].passes, k = tiles[q].active;
        const int64_t words = lane_words(net->kind1, t * k) + t * wpr2 + 1;
        if (k > max_k) max_k = k;
        if (t > max_t) max_t = t;
        if (words > max_words) max_words = words;
    }
    float *wp = aligned_alloc(64, (size_t)(max_k * width * 4 + 63) / 64 * 64);
    uint64_t *words = malloc((size_t)max_words * 8);
    int32_t *kept = malloc((size_t)(max_t * max_k + width) * 4);
    int32_t *dropped = malloc((size_t)(max_t * max_k + max_k) * 4);
    int64_t *counts = malloc((size_t)max_t * 8);
    float *h = aligned_alloc(64, (size_t)(max_t * width * 4 + 63) / 64 * 64);
    float *z = malloc((size_t)net->c_pad * 4);
    int rc = 0;
    if (!wp || !words || !kept || !dropped || !counts || !h || !z) {
        rc = -1;
        goto done;
    }
    for (int64_t q = 0; q < n; q++) {
        const TileIn *tile = &tiles[q];
        const int64_t t = tile->passes, k = tile->active;
        for (int64_t i = 0; i < k; i++) { /* W' = v[i] * fc2_t[unit i] */
            const float v = tile->values[i], *src = net->fc2_t + tile->units[i] * width;
            float *dst = wp + i * width;
            for (int64_t c = 0; c < width; c++) dst[c] = v * src[c];
        }
        uint64_t state[4];
        state[0] = splitmix64(splitmix64(splitmix64(splitmix64(tile->seed) ^ (uint64_t)tile->image) ^
                                         (uint64_t)tile->block));
        state[1] = splitmix64(state[0]);
        state[2] = splitmix64(state[1]);
        state[3] = 1;
        const int64_t w1 = lane_words(net->kind1, t * k);
        sfc64_fill(state, words, w1 + t * wpr2);
        const int8_t *lanes8 = (const int8_t *)words;
        const int16_t *lanes16 = (const int16_t *)words;
        for (int64_t p = 0; p < t; p++) { /* each pass's kept and dropped active units, ascending (branch-free) */
            int32_t *keep = kept + p * k, *drop = dropped + p * k;
            const int64_t e0 = p * k;
            int64_t m = 0;
            for (int64_t i = 0; i < k; i++) {
                int in = 1;
                if (net->kind1 == KIND_BIT) in = lanes8[e0 + i] >= 0;
                else if (net->kind1 == KIND_THRESHOLD) in = lanes16[e0 + i] >= net->threshold1;
                keep[m] = (int32_t)i;
                drop[i - m] = (int32_t)i;
                m += in;
            }
            counts[p] = m;
        }
        fc2_tile(net, wp, kept, dropped, counts, k, t, h, dropped + max_t * max_k);
        double *sp = sum_p + q * classes, *sp2 = sum_p2 + q * classes;
        double sh = 0.0;
        for (int64_t c = 0; c < classes; c++) sp[c] = sp2[c] = 0.0;
        for (int64_t p = 0; p < t; p++) {
            fc3_pass(net, h + p * width, words + w1 + p * wpr2, z, kept);
            float top = z[0];
            for (int64_t c = 1; c < classes; c++) top = z[c] > top ? z[c] : top;
            float e[64], s = 0.0f, pz = 0.0f;
            for (int64_t c = 0; c < classes; c++) {
                z[c] -= top;
                e[c] = expf(z[c]);
                s += e[c];
            }
            for (int64_t c = 0; c < classes; c++) {
                const float pc = e[c] / s;
                pz += pc * z[c];
                sp[c] += (double)pc;
                sp2[c] += (double)pc * (double)pc;
            }
            sh += (double)(logf(s) - pz); /* -sum p log p = log s - sum p z, with log p = z - log s */
        }
        sum_h[q] = sh;
    }
done:
    free(wp);
    free(words);
    free(kept);
    free(dropped);
    free(counts);
    free(h);
    free(z);
    return rc;
}

/* the struct sizes ctypes must agree with */
int64_t mc_sizeof_net(void) { return (int64_t)sizeof(Net); }
int64_t mc_sizeof_tile(void) { return (int64_t)sizeof(TileIn); }

/* fc1, its ReLU and the active units of `b` images: pixels (b, d), fc1_t (d, width) with the input normalisation
 * folded in. Per image, h1 = (sum over its nonzero pixels x[i] * fc1_t[i], fused multiply-adds in ascending i) +
 * bias, one image at a time (an image's numbers never depend on the others); then its units u with h1[u] > 0,
 * ascending, and those values. offsets (b + 1,): where each image's units start. Returns the total. `scratch`:
 * d int32 + width floats. */
int64_t mc_prepare(const float *pixels, const float *fc1_t, const float *bias, int64_t b, int64_t d, int64_t width,
                   int64_t *units, float *values, int64_t *offsets, void *scratch) {
    int32_t *lit = scratch;
    float *h = (float *)(lit + d);
    int64_t n = 0;
    offsets[0] = 0;
    for (int64_t r = 0; r < b; r++) {
        const float *x = pixels + r * d;
        int64_t m = 0;
        for (int64_t i = 0; i < d; i++) { /* the nonzero pixels (a zero adds nothing), branch-free */
            lit[m] = (int32_t)i;
            m += x[i] != 0.0f;
        }
        int64_t col = 0;
        for (; col + 64 <= width; col += 64) {
            __m256 a[8];
            for (int g = 0; g < 8; g++) a[g] = _mm256_setzero_ps();
            for (int64_t j = 0; j < m; j++) {
                const __m256 v = _mm256_set1_ps(x[lit[j]]);
                const float *w = fc1_t + (int64_t)lit[j] * width + col;
                for (int g = 0; g < 8; g++) a[g] = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + 8 * g), a[g]);
            }
            for (int g = 0; g < 8; g++) _mm256_storeu_ps(h + col + 8 * g, _mm256_add_ps(a[g], _mm256_loadu_ps(bias + col + 8 * g)));
        }
        for (; col < width; col++) { /* widths that are not a multiple of 64: the same sums, one column at a time */
            float a = 0.0f;
            for (int64_t j = 0; j < m; j++) a = fmaf(x[lit[j]], fc1_t[(int64_t)lit[j] * width + col], a);
            h[col] = a + bias[col];
        }
        for (int64_t u = 0; u < width; u++) {
            units[n] = u;
            values[n] = h[u];
            n += h[u] > 0.0f;
        }
        offsets[r + 1] = n;
    }
    return n;
}

/* One request's summaries from its per-tile sums (image-major, `blocks` tiles per image, added in block order):
 * out (float32) = mean (b, classes), variance, std (b, classes), predictive, expected, mutual information (b,). */
void mc_summarise(const double *sum_p, const double *sum_p2, const double *sum_h, int64_t b, int64_t blocks,
                  int64_t classes, int64_t t, float *out) {
    float *mean = out, *variance = out + b * classes, *std_ = out + 2 * b * classes;
    float *predictive = out + 3 * b * classes, *expected = predictive + b, *mutual = expected + b;
    for (int64_t r = 0; r < b; r++) {
        double h = 0.0, entropy = 0.0;
        for (int64_t j = 0; j < blocks; j++) h += sum_h[r * blocks + j];
        for (int64_t c = 0; c < classes; c++) {
            double p = 0.0, p2 = 0.0;
            for (int64_t j = 0; j < blocks; j++) {
                p += sum_p[(r * blocks + j) * classes + c];
                p2 += sum_p2[(r * blocks + j) * classes + c];
            }
            const double m = p / (double)t, var = fmax(p2 / (double)t - m * m, 0.0);
            mean[r * classes + c] = (float)m;
            variance[r * classes + c] = (float)var;
            std_[r * classes + c] = (float)sqrt(var);
            entropy -= m * log(fmax(m, 1e-300)); /* 0 log 0 = 0 */
        }
        const double e = h / (double)t;
        predictive[r] = (float)entropy;
        expected[r] = (float)e;
        mutual[r] = (float)fmax(entropy - e, 0.0);
    }
}

/* The input check's scores of `b` images: pixels (b, d) float32 raw 0-255; c_t (cols, d) float64, row j the j-th
 * column of EvalKernel's projection (the first k: the principal basis / 255, the last: -2 mean / 255); c_bias
 * (cols,). Per image, in float64: a_j = x . c_t[j] + c_bias[j] (4-lane partial sums over ascending i, added
 * lane 0 to 3), z2 = (x . x) / 255^2 + a_k, score = max(z2 - sum_{j<k} a_j^2, 0) / d: one image at a time, so a
 * score never depends on what else is scored with it. `scratch`: d doubles. */
void mc_scores(const float *pixels, const double *c_t, const double *c_bias, int64_t b, int64_t d, int64_t k,
               double *out, double *scratch) {
    for (int64_t r = 0; r < b; r++) {
        const float *x = pixels + r * d;
        int64_t i = 0;
        __m256d sq = _mm256_setzero_pd();
        for (; i + 4 <= d; i += 4) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
            _mm256_storeu_pd(scratch + i, v);
            sq = _mm256_fmadd_pd(v, v, sq);
        }
        double lanes[4];
        _mm256_storeu_pd(lanes, sq);
        double xx = ((lanes[0] + lanes[1]) + lanes[2]) + lanes[3];
        for (; i < d; i++) {
            scratch[i] = (double)x[i];
            xx = fma(scratch[i], scratch[i], xx);
        }
        double a[72], tail = 0.0;
        int64_t j = 0;
        for (; j + 8 <= k + 1; j += 8) { /* eight columns at once: eight independent chains of 4-lane sums */
            __m256d acc[8];
            for (int g = 0; g < 8; g++) acc[g] = _mm256_setzero_pd();
            for (int64_t q = 0; q + 4 <= d; q += 4) {
                const __m256d v = _mm256_loadu_pd(scratch + q);
                for (int g = 0; g < 8; g++) acc[g] = _mm256_fmadd_pd(v, _mm256_loadu_pd(c_t + (j + g) * d + q), acc[g]);
            }
            for (int g = 0; g < 8; g++) {
                _mm256_storeu_pd(lanes, acc[g]);
                double s = ((lanes[0] + lanes[1]) + lanes[2]) + lanes[3];
                for (int64_t q = d & ~(int64_t)3; q < d; q++) s = fma(scratch[q], c_t[(j + g) * d + q], s);
                a[j + g] = s + c_bias[j + g];
            }
        }
        for (; j <= k; j++) { /* the same sums, one column at a time */
            const double *w = c_t + j * d;
            __m256d acc = _mm256_setzero_pd();
            for (int64_t q = 0; q + 4 <= d; q += 4) acc = _mm256_fmadd_pd(_mm256_loadu_pd(scratch + q), _mm256_loadu_pd(w + q), acc);
            _mm256_storeu_pd(lanes, acc);
            double s = ((lanes[0] + lanes[1]) + lanes[2]) + lanes[3];
            for (int64_t q = d & ~(int64_t)3; q < d; q++) s = fma(scratch[q], w[q], s);
            a[j] = s + c_bias[j];
        }
        for (int64_t j = 0; j < k; j++) tail += a[j] * a[j];
        const double z2 = xx * (1.0 / (255.0 * 255.0)) + a[k];
        out[r] = fmax(z2 - tail, 0.0) / (double)d;
    }
}
