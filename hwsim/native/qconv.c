/* hwsim native kernels: exact uint8 x int8 convolutions whose requantize runs in their epilogue, so
 * no accumulator ever reaches memory (hwsim/native_conv.py drives them through ctypes).
 *
 * Dense convolutions (groups 1) read a padded channels-last uint8 input [N, Hp, Wp, Cp] (Cp a multiple
 * of 4, padding and extra channels at the zero point; or an unpadded int8 input, each byte read as
 * v ^ 0x80 = v + 128: geometry.flip) and weights packed as [O/16][kh][kw][Cp/4][16][4]
 * (the vpdpbusd shape: 16 int32 lanes, 4 consecutive input channels each; AMX: its own layout). Sums
 * are int32: the caller proves 255 * sum|w| < 2**31; the zero point enters as zp * sum(w) per output.
 * Depthwise convolutions (one input and one output channel per group) read a uint8 input, unpadded (taps
 * outside it skipped or read as zero points) or padded by the caller (geometry pad_top = pad_left = 0);
 * 3 x 3 ones with stride 1 along x sum four taps per vpdpbusd (qc_depthwise_quad512).
 *
 * Epilogues (qc_epilogue.rule): 1, float32 proven exact: v = sum + bias, p = v * scale, round half to
 * even, + zero point, clip; 2, the same with the scale rounded to float32, and every lane whose p lies
 * within the error bound of a half redone with the integer rule; 0, the IR's integer rule in int64
 * (portable kernels, and a fused residual add's in the vector ones): q = ((v*m + 2**(s-1) - 1 +
 * ((v*m >> s) & 1)) >> s) + zero point, clipped.
 * All count saturations (above clip max; below clip min when low_counts) and accumulator overflows (v
 * outside [acc_min, acc_max], when check_overflow) as hwsim.kernels.requant / requant_checked /
 * requant_int do; optionally the residual add the output feeds runs too, with its own requantize.
 *
 * Variants, chosen at run time (qc_variants()): AVX-512 VNNI and AMX (function target attributes), and
 * portable C. qc_run replays a table of recorded calls in one call (hwsim/replay.py). */
#define _GNU_SOURCE /* syscall() for AMX's permission request */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define QC_MAX_P 8 /* output pixels per register tile */
#define QC_MAX_B 3 /* blocks of 16 output channels per register tile (8 x 3 = 24 accumulators) */
#define QC_DW_CHUNK 256 /* depthwise: channels per accumulator chunk */
#define QC_DW_TAPS 25   /* padded depthwise (AVX-512): taps held in registers, kernels up to 5 x 5 */

typedef struct {
    int64_t n, hp, wp, cp;          /* input: batch, padded height/width, channels (dense: multiple of 4) */
    int64_t o, kh, kw, sh, sw, dh, dw; /* output channels, kernel, stride, dilation */
    int64_t oh, ow;                 /* output size */
    int64_t pad_top, pad_left;      /* depthwise only: the padding the input lacks (0 when padded) */
    int64_t flip;                   /* dense, not AMX: the input bytes are int8, read as uint8 v + 128 (v ^ 0x80) */
} qc_geometry;

typedef struct {
    const int32_t *correction; /* per output channel: zero point * sum(w) (dense; 0 for depthwise) */
    const int64_t *bias;       /* int64 rule: per output channel */
    const int64_t *multiplier, *shift, *up; /* int64 rule: shift 1..62, up = 2**(shift - 1) - 1 */
    const float *scale_f, *bias_f;          /* float rules: multiplier * 2**-shift (rounded when checked), bias */
    int64_t zero_point, clip_min, clip_max, acc_min, acc_max;
    int64_t low_counts, check_overflow;
    int64_t rule;     /* 0 int64; 1 float32, proven exact; 2 float32 checked against the nearest half */
    float error;      /* checked: |p - exact| <= error * |p| */
    int64_t out_kind; /* 0 uint8, 1 int8, 2 int16, 3 int32 */
    const int32_t *offset; /* float rules, vector kernels: bias - correction (mod 2**32), as the per-channel arrays */
    int64_t wide_products; /* checked: some |sum * scale| may reach 2**30 (the vector kernels then clamp it first) */
    int64_t uniform_int;   /* int64 rule: one multiplier (|m| < 2**31) and shift (>= 32) for all channels, bias 0 */
} qc_epilogue;

/* A residual add fed by the kernel's requantized output (`own`), with its own requantize (any rule). */
typedef struct {
    const qc_epilogue *add;
    const void *other; /* the add's other operand: the output's layout and size */
    int64_t other_kind; /* 0 uint8, 1 int8, 2 int16, 3 int32 */
    int64_t own_zero, other_zero, own_multiplier, other_multiplier;
} qc_residual;

/* The int64 rule for one centred sum (+ bias): (clipped result, saturated?). */
static inline int64_t qc_rule_int(int64_t v, int64_t c, const qc_epilogue *e, int64_t *saturated) {
    const int64_t p = v * e->multiplier[c], s = e->shift[c];
    const int64_t r = ((p + e->up[c] + ((p >> s) & 1)) >> s) + e->zero_point;
    *saturated = (r > e->clip_max) + e->low_counts * (r < e->clip_min);
    return r < e->clip_min ? e->clip_min : (r > e->clip_max ? e->clip_max : r);
}

#define QC_WIDEST (QC_MAX_B * 16 > QC_DW_CHUNK ? QC_MAX_B * 16 : QC_DW_CHUNK)

/* Requantize `width` sums of output channels c0.. into out[at..]; counts[0] += saturations,
 * counts[1] += overflows. Float rules: each sum is exact in float32 (the caller's bound), so is
 * p = v * scale for rule 1 (np.rint's half to even is then the integer rule); rule 2 redoes in int64
 * every element whose p lies within the error of a half, as hwsim.kernels.requant_checked does. */
__attribute__((always_inline)) static inline void qc_requantize(const int32_t *acc, int64_t width, int64_t c0,
                                                                const qc_epilogue *e, int64_t at, void *out,
                                                                int64_t *counts) {
    int32_t q[QC_WIDEST];
    int64_t saturated = 0, overflowed = 0;
    const int32_t *correction = e->correction + c0;
    if (e->rule == 0) {
        for (int64_t i = 0; i < width; i++) {
            const int64_t v = (int64_t)(acc[i] - correction[i]) + e->bias[c0 + i];
            overflowed += (v < e->acc_min) | (v > e->acc_max);
            int64_t sat;
            q[i] = (int32_t)qc_rule_int(v, c0 + i, e, &sat);
            saturated += sat;
        }
    } else {
        const float *scale = e->scale_f + c0, *bias = e->bias_f + c0;
        const float zero = (float)e->zero_point, low = (float)e->clip_min, high = (float)e->clip_max;
        const float acc_low = (float)e->acc_min, acc_high = (float)e->acc_max, error = e->error;
        const int32_t low_counts = (int32_t)e->low_counts;
        int32_t sat32 = 0, over32 = 0, near = 0;
        for (int64_t i = 0; i < width; i++) {
            const float v = (float)(acc[i] - correction[i]) + bias[i];
            over32 += (v < acc_low) | (v > acc_high);
            const float p = v * scale[i];
            near |= fabsf(p - floorf(p) - 0.5f) <= fabsf(p) * error;
            float r = rintf(p) + zero;
            sat32 += (r > high) + low_counts * (r < low);
            r = r < low ? low : r;
            q[i] = (int32_t)(r > high ? high : r);
        }
        saturated = sat32, overflowed = over32;
        if (e->rule == 2 && near) {
            for (int64_t i = 0; i < width; i++) {
                const float v = (float)(acc[i] - correction[i]) + bias[i];
                const float p = v * scale[i];
                if (!(fabsf(p - floorf(p) - 0.5f) <= fabsf(p) * error)) continue;
                const float r = rintf(p) + zero;
                saturated -= (r > high) + low_counts * (r < low);
                int64_t sat;
                q[i] = (int32_t)qc_rule_int((int64_t)v, c0 + i, e, &sat);
                saturated += sat;
            }
        }
    }
    switch (e->out_kind) {
    case 0: for (int64_t i = 0; i < width; i++) ((uint8_t *)out)[at + i] = (uint8_t)q[i]; break;
    case 1: for (int64_t i = 0; i < width; i++) ((int8_t *)out)[at + i] = (int8_t)q[i]; break;
    case 2: for (int64_t i = 0; i < width; i++) ((int16_t *)out)[at + i] = (int16_t)q[i]; break;
    default: memcpy((int32_t *)out + at, q, (size_t)width * sizeof q[0]); break;
    }
    counts[0] += saturated;
    counts[1] += e->check_overflow ? overflowed : 0;
}

static inline int32_t qc_bytes4(const uint8_t *a) {
    int32_t v;
    memcpy(&v, a, sizeof v); /* four activation bytes as one lane (little-endian, as vpdpbusd reads them) */
    return v;
}

/* ---- portable C ---------------------------------------------------------------------------- */

/* One output pixel, all output channels: sums into acc[o]. */
static void qc_dense_pixel(const uint8_t *pix, const int8_t *w, const qc_geometry *g, int32_t *acc) {
    const int64_t groups4 = g->cp / 4, block_stride = g->kh * g->kw * groups4 * 64;
    const int32_t flip = g->flip ? 0x80 : 0;
    for (int64_t c = 0; c < g->o; c++) {
        const int8_t *wb = w + (c / 16) * block_stride + (c % 16) * 4;
        int32_t sum = 0;
        for (int64_t u = 0; u < g->kh; u++)
            for (int64_t v = 0; v < g->kw; v++) {
                const uint8_t *a = pix + (u * g->dh * g->wp + v * g->dw) * g->cp;
                const int8_t *wt = wb + (u * g->kw + v) * groups4 * 64;
                for (int64_t k = 0; k < groups4; k++)
                    for (int j = 0; j < 4; j++) sum += (int32_t)(a[4 * k + j] ^ flip) * (int32_t)wt[64 * k + j];
            }
        acc[c] = sum;
    }
}

static void qc_dense_portable(const uint8_t *x, const int8_t *w, const qc_geometry *g, const qc_epilogue *e,
                              void *out, int64_t *counts, int32_t *acc) {
    for (int64_t n = 0; n < g->n; n++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++) {
                const uint8_t *pix = x + ((n * g->hp + oy * g->sh) * g->wp + ox * g->sw) * g->cp;
                qc_dense_pixel(pix, w, g, acc);
                for (int64_t c0 = 0; c0 < g->o; c0 += QC_DW_CHUNK) {
                    const int64_t width = g->o - c0 < QC_DW_CHUNK ? g->o - c0 : QC_DW_CHUNK;
                    qc_requantize(acc + c0, width, c0, e, ((n * g->oh + oy) * g->ow + ox) * g->o + c0, out, counts);
                }
            }
}

/* Depthwise, portable: centred int16 values times int16 weights [kh * kw][C], summed in int32 per chunk;
 * taps outside the input are skipped (they add (zp - zp) * w = 0). */
static void qc_depthwise_portable(const uint8_t *x, int64_t zero_u8, const int16_t *w, const qc_geometry *g,
                                  const qc_epilogue *e, void *out, int64_t *counts) {
    const int64_t C = g->o, H = g->hp, W = g->wp;
    int32_t acc[QC_DW_CHUNK];
    for (int64_t n = 0; n < g->n; n++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow; ox++)
                for (int64_t c0 = 0; c0 < C; c0 += QC_DW_CHUNK) {
                    const int64_t width = C - c0 < QC_DW_CHUNK ? C - c0 : QC_DW_CHUNK;
                    for (int64_t i = 0; i < width; i++) acc[i] = 0;
                    for (int64_t u = 0; u < g->kh; u++) {
                        const int64_t iy = oy * g->sh - g->pad_top + u * g->dh;
                        if (iy < 0 || iy >= H) continue;
                        for (int64_t v = 0; v < g->kw; v++) {
                            const int64_t ix = ox * g->sw - g->pad_left + v * g->dw;
                            if (ix < 0 || ix >= W) continue;
                            const uint8_t *a = x + ((n * H + iy) * W + ix) * C + c0;
                            const int16_t *wt = w + (u * g->kw + v) * C + c0;
                            for (int64_t i = 0; i < width; i++)
                                acc[i] += (int32_t)(int16_t)((int16_t)a[i] - (int16_t)zero_u8) * (int32_t)wt[i];
                        }
                    }
                    qc_requantize(acc, width, c0, e, ((n * g->oh + oy) * g->ow + ox) * C + c0, out, counts);
                }
}

/* ---- AVX-512 VNNI ---------------------------------------------------------------------------- */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define QC_HAVE_X86 1
#define QC_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

/* P pixels x B blocks of 16 channels, every tap and input channel: int32 sums into acc[p * acc_stride + 16 b
 * + lane], the last block's lanes past `last` not stored (they would overwrite the next pixel's). F: the
 * input is int8 (geometry.flip); else each lane is broadcast straight from memory (a load, no shuffle).
 * The loops over registers are unrolled (else GCC zeroes a dead stack copy of s with rep stos per call). */
#define QC_TILE512(P, B, F)                                                                                   \
    QC_AVX512 static void qc_tile512_##P##_##B##_##F(const uint8_t *const *pix, const int8_t *w,                \
                                                     int64_t block_stride, const int32_t *offsets,              \
                                                     int64_t steps, int32_t *acc, int64_t acc_stride,           \
                                                     __mmask16 last) {                                          \
        __m512i s[P][B];                                                                                      \
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++)                                                   \
            _Pragma("GCC unroll 3") for (int b = 0; b < B; b++) s[p][b] = _mm512_setzero_si512();             \
        const int32_t flip = F ? (int32_t)0x80808080u : 0;                                                    \
        for (int64_t k = 0; k < steps; k++) { /* K step k: 4 input channels of one tap, at offsets[k] */        \
            const int64_t at = offsets[k];                                                                    \
            __m512i wv[B];                                                                                    \
            _Pragma("GCC unroll 3") for (int b = 0; b < B; b++) wv[b] = _mm512_loadu_si512(w + b * block_stride + k * 64); \
            _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) {                                             \
                const __m512i a = _mm512_set1_epi32(qc_bytes4(pix[p] + at) ^ flip);                           \
                _Pragma("GCC unroll 3") for (int b = 0; b < B; b++) s[p][b] = _mm512_dpbusd_epi32(s[p][b], a, wv[b]); \
            }                                                                                                 \
        }                                                                                                     \
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++)                                                   \
            _Pragma("GCC unroll 3") for (int b = 0; b < B; b++)                                               \
                _mm512_mask_storeu_epi32(acc + p * acc_stride + b * 16, b == B - 1 ? last : 0xffff, s[p][b]);  \
    }
#define QC_TILES512(F) QC_TILE512(8, 3, F) QC_TILE512(8, 2, F) QC_TILE512(8, 1, F) \
    QC_TILE512(1, 3, F) QC_TILE512(1, 2, F) QC_TILE512(1, 1, F)
QC_TILES512(0)
QC_TILES512(1)
#undef QC_TILES512

/* ---- the float32 epilogue in 16-lane vectors: the same operations in the same order as the scalar
 * rule (and as hwsim.kernels.requant / requant_checked), so the same results and counts ---- */

/* The checked rule's cold path: lanes `near` of q redone with the int64 rule, their counts corrected. */
QC_AVX512 __attribute__((noinline)) static __m512i qc_redo_near(const qc_epilogue *e, __m512i q, __m512 v, __m512 p,
                                                               __mmask16 near, int64_t c, int64_t *corrections) {
    int32_t lanes[16];
    float values[16], products[16];
    _mm512_storeu_si512(lanes, q);
    _mm512_storeu_ps(values, v);
    _mm512_storeu_ps(products, p);
    for (int t = 0; t < 16; t++) {
        if (!((near >> t) & 1)) continue;
        const float f = rintf(products[t]) + (float)e->zero_point;
        *corrections -= (f > (float)e->clip_max) + e->low_counts * (f < (float)e->clip_min);
        int64_t sat;
        lanes[t] = (int32_t)qc_rule_int((int64_t)values[t], c + t, e, &sat);
        *corrections += sat;
    }
    return _mm512_loadu_si512(lanes);
}

/* One requantize stage (a float32 rule): its constants, loaded once per kernel call, and its counters. */
typedef struct {
    const qc_epilogue *e;
    __m512i zero, low, high, acc_low32, acc_high32;
    __m512 acc_low, acc_high, near_half, magnitude;
    __m512i multiplier32, up64, one64; /* the uniform int64 rule's constants (qc_round_int512) */
    __m128i shift_count;
    int checked, low_counts, check_overflow, int_rule; /* checked: 0 no, 1 with the clamp, 2 without (qc_round512) */
    int uniform_int;
} qc_stage512;

/* One stage's counters, kept apart from the constants: a kernel holds them in local variables (registers;
 * a counter in memory would chain every vector's update through a store and a load). */
typedef struct {
    __m512i saturated, overflowed;
    int64_t corrections;
} qc_tally512;

/* A kernel's epilogue: its requantize (`first`), and optionally the residual add it feeds, computed in
 * int32 from the first result and the other operand, with that add's requantize (`second`). */
typedef struct {
    qc_stage512 first, second;
    int residual;
    const void *other;
    int64_t other_kind, out_kind;
    __m512i own_zero, other_zero, own_multiplier, other_multiplier;
} qc_ctx512;

QC_AVX512 __attribute__((always_inline)) static inline void qc_stage_init(qc_stage512 *s, const qc_epilogue *e) {
    s->e = e;
    s->zero = _mm512_set1_epi32((int32_t)e->zero_point);
    s->low = _mm512_set1_epi32((int32_t)e->clip_min);
    s->high = _mm512_set1_epi32((int32_t)e->clip_max);
    s->acc_low = _mm512_set1_ps((float)e->acc_min);
    s->acc_high = _mm512_set1_ps((float)e->acc_max);
    /* the checked rule's reach: where |p| <= B (B - 2: the widest clip from the zero point), |p| * error <=
     * B * error, so every lane the error could misround is redone; past B both roundings clip alike and
     * count the same saturation. Rounded up, so the set only grows. */
    const double reach = (double)(llabs(e->clip_min - e->zero_point) > llabs(e->clip_max - e->zero_point)
                                      ? llabs(e->clip_min - e->zero_point)
                                      : llabs(e->clip_max - e->zero_point)) + 2.0;
    /* near a half: |p - rint(p)| >= 0.5 - reach * error, the bound rounded down so the set only grows */
    const double threshold = 0.5 - reach * (double)e->error * (1.0 + 0x1p-20);
    float near_half = (float)threshold;
    if ((double)near_half > threshold) near_half = nextafterf(near_half, -1.0f);
    s->near_half = _mm512_set1_ps(near_half);
    s->magnitude = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    s->checked = e->rule == 2 ? (e->wide_products ? 1 : 2) : 0;
    s->uniform_int = e->rule == 0 && e->uniform_int;
    s->multiplier32 = _mm512_set1_epi64(s->uniform_int ? e->multiplier[0] : 0);
    s->up64 = _mm512_set1_epi64(s->uniform_int ? e->up[0] : 0);
    s->one64 = _mm512_set1_epi64(1);
    s->shift_count = _mm_set_epi64x(0, s->uniform_int ? e->shift[0] : 0);
    s->int_rule = e->rule == 0; /* a residual add's requantize only (qc_round_int512) */
    s->acc_low32 = _mm512_set1_epi32((int32_t)(e->acc_min < INT32_MIN ? INT32_MIN : e->acc_min));
    s->acc_high32 = _mm512_set1_epi32((int32_t)(e->acc_max > INT32_MAX ? INT32_MAX : e->acc_max));
    s->low_counts = (int)e->low_counts;
    s->check_overflow = (int)e->check_overflow;
}

QC_AVX512 __attribute__((always_inline)) static inline void qc_ctx_init(qc_ctx512 *x, const qc_epilogue *e, const qc_residual *r) {
    qc_stage_init(&x->first, e);
    x->residual = r != NULL;
    x->out_kind = e->out_kind;
    if (r) {
        qc_stage_init(&x->second, r->add);
        x->other = r->other;
        x->other_kind = r->other_kind;
        x->out_kind = r->add->out_kind;
        x->own_zero = _mm512_set1_epi32((int32_t)r->own_zero);
        x->other_zero = _mm512_set1_epi32((int32_t)r->other_zero);
        x->own_multiplier = _mm512_set1_epi32((int32_t)r->own_multiplier);
        x->other_multiplier = _mm512_set1_epi32((int32_t)r->other_multiplier);
    }
}

/* counts[0], counts[1]: the first stage's saturations and overflows; counts[2], counts[3]: the add's. */
QC_AVX512 __attribute__((always_inline)) static inline void qc_ctx_finish(const qc_ctx512 *x, const qc_tally512 *t1,
                                                                          const qc_tally512 *t2, int64_t *counts) {
    const qc_stage512 *stages[2] = {&x->first, &x->second};
    const qc_tally512 *tallies[2] = {t1, t2};
    for (int i = 0; i < 1 + x->residual; i++) {
        counts[2 * i] += _mm512_reduce_add_epi32(tallies[i]->saturated) + tallies[i]->corrections;
        counts[2 * i + 1] += stages[i]->check_overflow ? _mm512_reduce_add_epi32(tallies[i]->overflowed) : 0;
    }
}

/* Clip 16 results q (mask m, zero point added) to the stage's limits, counting saturations (above the
 * clip max; below the clip min when low_counts). */
QC_AVX512 __attribute__((always_inline)) static inline __m512i qc_clip_count512(const qc_stage512 *s, qc_tally512 *t,
                                                                                __m512i q, __mmask16 m,
                                                                                const int low_counts) {
    const __m512i one = _mm512_set1_epi32(1);
    t->saturated = _mm512_mask_add_epi32(t->saturated, _mm512_mask_cmpgt_epi32_mask(m, q, s->high), t->saturated, one);
    if (low_counts)
        t->saturated = _mm512_mask_add_epi32(t->saturated, _mm512_mask_cmplt_epi32_mask(m, q, s->low), t->saturated, one);
    return _mm512_max_epi32(_mm512_min_epi32(q, s->high), s->low);
}

/* Requantize 16 values v (mask m; sum + bias, exact integers in float32) of channels c..: round half to
 * even, zero point, clip, counting; the checked rule redoes the lanes near a half in int64. */
QC_AVX512 __attribute__((always_inline)) static inline __m512i qc_round512(const qc_stage512 *s, qc_tally512 *t,
                                                                           __m512 v, int64_t c, __mmask16 m,
                                                                           const int checked, const int low_counts,
                                                                           const int check_overflow) {
    if (check_overflow) {
        const __mmask16 outside = _mm512_mask_cmp_ps_mask(m, v, s->acc_low, _CMP_LT_OQ) |
                                  _mm512_mask_cmp_ps_mask(m, v, s->acc_high, _CMP_GT_OQ);
        t->overflowed = _mm512_sub_epi32(t->overflowed, _mm512_movm_epi32(outside));
    }
    __m512 p = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, s->e->scale_f + c));
    if (checked == 1) /* past 2**30 a product only clips (|zero point|, |clip limits| < 2**21): keep it in int32 */
        p = _mm512_min_ps(_mm512_max_ps(p, _mm512_set1_ps(-0x1p30f)), _mm512_set1_ps(0x1p30f));
    /* round half to even in the conversion itself (|p| < 2**24 for rule 1), then zero point and clip */
    __m512i q = _mm512_add_epi32(_mm512_cvt_roundps_epi32(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                 s->zero);
    q = qc_clip_count512(s, t, q, m, low_counts);
    if (checked) {
        /* near a half: |p - rint(p)| at least `near_half` (vreduceps: x - rint(x), exact; past the clip
         * bound, where p may be an integer in float32 while the exact product is not, a misrounded lane
         * clips the same) */
        const __m512 fraction = _mm512_reduce_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __mmask16 near = _mm512_mask_cmp_ps_mask(m, _mm512_and_ps(fraction, s->magnitude), s->near_half, _CMP_GE_OQ);
        if (near) { /* a local for the cold path's count: the stage's address must not escape (registers) */
            int64_t delta = 0;
            q = qc_redo_near(s->e, q, v, p, near, c, &delta);
            t->corrections += delta;
        }
    }
    return q;
}

/* The IR's integer rule on 16 int32 sums v (mask m) of channels c.. (a residual add's, below 2**31 by
 * its bound), as qc_rule_int: v + bias, times the multiplier in int64, rounded half to even by the
 * shift, + zero point, saturated to int32 (the clip limits lie inside it), then clip and count. */
QC_AVX512 __attribute__((always_inline)) static inline __m512i qc_round_int512(const qc_stage512 *s, qc_tally512 *t,
                                                                               __m512i v, int64_t c, __mmask16 m) {
    const qc_epilogue *e = s->e;
    if (s->check_overflow) {
        const __mmask16 outside = _mm512_mask_cmplt_epi32_mask(m, v, s->acc_low32) |
                                  _mm512_mask_cmpgt_epi32_mask(m, v, s->acc_high32);
        t->overflowed = _mm512_mask_add_epi32(t->overflowed, outside, t->overflowed, _mm512_set1_epi32(1));
    }
    if (s->uniform_int) { /* 32 x 32 -> 64-bit products of the even and the odd lanes; |p| < 2**62, shift >= 32,
                           * so every rounded result, and it plus the zero point, fits int32 */
        const __m512i even = _mm512_mul_epi32(v, s->multiplier32);
        const __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(v, 32), s->multiplier32);
        const __m512i re = _mm512_sra_epi64(
            _mm512_add_epi64(_mm512_add_epi64(even, s->up64), _mm512_and_si512(_mm512_sra_epi64(even, s->shift_count), s->one64)),
            s->shift_count);
        const __m512i ro = _mm512_sra_epi64(
            _mm512_add_epi64(_mm512_add_epi64(odd, s->up64), _mm512_and_si512(_mm512_sra_epi64(odd, s->shift_count), s->one64)),
            s->shift_count);
        const __m512i q = _mm512_add_epi32(_mm512_mask_blend_epi32(0xAAAA, re, _mm512_slli_epi64(ro, 32)), s->zero);
        return qc_clip_count512(s, t, q, m, s->low_counts);
    }
    const __m512i one = _mm512_set1_epi64(1), zero = _mm512_set1_epi64(e->zero_point);
    __m256i halves[2];
    for (int h = 0; h < 2; h++) {
        const __mmask8 mh = (__mmask8)(m >> (8 * h));
        const __m512i wide = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v));
        const __m512i value = _mm512_add_epi64(wide, _mm512_maskz_loadu_epi64(mh, e->bias + c + 8 * h));
        const __m512i shift = _mm512_maskz_loadu_epi64(mh, e->shift + c + 8 * h);
        const __m512i p = _mm512_mullo_epi64(value, _mm512_maskz_loadu_epi64(mh, e->multiplier + c + 8 * h));
        const __m512i up = _mm512_add_epi64(_mm512_maskz_loadu_epi64(mh, e->up + c + 8 * h),
                                            _mm512_and_si512(_mm512_srav_epi64(p, shift), one));
        halves[h] = _mm512_cvtsepi64_epi32(_mm512_add_epi64(_mm512_srav_epi64(_mm512_add_epi64(p, up), shift), zero));
    }
    return qc_clip_count512(s, t, _mm512_inserti64x4(_mm512_castsi256_si512(halves[0]), halves[1], 1), m, s->low_counts);
}

/* 16 integers (mask m) of type `kind` at base[at..] as int32 lanes. */
QC_AVX512 __attribute__((always_inline)) static inline __m512i qc_load512(const void *base, int64_t at, int64_t kind,
                                                                          __mmask16 m) {
    switch (kind) {
    case 0: return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, (const uint8_t *)base + at));
    case 1: return _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t *)base + at));
    case 2: return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, (const int16_t *)base + at));
    default: return _mm512_maskz_loadu_epi32(m, (const int32_t *)base + at);
    }
}

/* Store 16 results (mask m) as `kind` at out[at..]. */
QC_AVX512 __attribute__((always_inline)) static inline void qc_store512(__m512i q, __mmask16 m, void *out, int64_t at,
                                                                        int64_t kind) {
    if ((kind == 0 || kind == 1) && m == (__mmask16)0xffff) {
        __m128i bytes = _mm512_cvtepi32_epi8(q);
        __asm__("" : "+v"(bytes)); /* keep vpmovdb in registers: its memory form is much slower */
        _mm_storeu_si128((__m128i *)((int8_t *)out + at), bytes);
    } else if (kind == 0 || kind == 1)
        _mm_mask_storeu_epi8((int8_t *)out + at, m, _mm512_cvtepi32_epi8(q));
    else if (kind == 2)
        _mm256_mask_storeu_epi16((int16_t *)out + at, m, _mm512_cvtepi32_epi16(q));
    else
        _mm512_mask_storeu_epi32((int32_t *)out + at, m, q);
}

/* The epilogue of 16 values v of channels c.. whose output goes to out[at..]. The residual's sum
 * (own - own zero) * own multiplier + (other - other zero) * other multiplier is an integer in int32 (the
 * caller's bound); with a float32 rule below 2**24 (that form's bound), so its conversion is exact. */
QC_AVX512 __attribute__((always_inline)) static inline void qc_emit512(const qc_ctx512 *x, qc_tally512 *t1,
                                                                       qc_tally512 *t2, __m512 v, int64_t c,
                                                                       __mmask16 m, int64_t at, void *out,
                                                                       const int residual, const int checked,
                                                                       const int low_counts, const int check_overflow,
                                                                       const int64_t out_kind) {
    const qc_stage512 *f = &x->first;
    __m512i q = qc_round512(f, t1, v, c, m, checked, low_counts, check_overflow);
    if (residual) {
        const __m512i other = qc_load512(x->other, at, x->other_kind, m);
        const __m512i total =
            _mm512_add_epi32(_mm512_mullo_epi32(_mm512_sub_epi32(q, x->own_zero), x->own_multiplier),
                             _mm512_mullo_epi32(_mm512_sub_epi32(other, x->other_zero), x->other_multiplier));
        const qc_stage512 *s2 = &x->second;
        if (s2->int_rule) {
            q = qc_round_int512(s2, t2, total, c, m);
        } else {
            const __m512 value = _mm512_add_ps(_mm512_cvtepi32_ps(total), _mm512_maskz_loadu_ps(m, s2->e->bias_f + c));
            q = qc_round512(s2, t2, value, c, m, s2->checked, s2->low_counts, s2->check_overflow);
        }
    }
    qc_store512(q, m, out, at, out_kind);
}

/* Add a call's counters into the kernel's. */
QC_AVX512 __attribute__((always_inline)) static inline void qc_tally_add(qc_tally512 *total, const qc_tally512 *part) {
    total->saturated = _mm512_add_epi32(total->saturated, part->saturated);
    total->overflowed = _mm512_add_epi32(total->overflowed, part->overflowed);
    total->corrections += part->corrections;
}

/* Requantize `pixels` rows of `width` int32 sums of channels c0.. (less the correction, plus bias), rows
 * acc_stride / out_stride apart. */
QC_AVX512 __attribute__((always_inline)) static inline void qc_rows512(
    const qc_ctx512 *x, qc_tally512 *t1, qc_tally512 *t2, const int32_t *acc, int64_t pixels, int64_t acc_stride,
    int64_t width, int64_t c0, int64_t at, int64_t out_stride, void *out, const int residual, const int checked, const int low_counts,
    const int check_overflow, const int64_t out_kind) {
    const qc_epilogue *e = x->first.e;
    /* fresh counters for this call (the caller's live across its opaque tile calls, which clobber registers) */
    qc_tally512 n1 = {_mm512_setzero_si512(), _mm512_setzero_si512(), 0}, n2 = n1;
    const int32_t *correction = e->correction + c0;
    const float *bias = e->bias_f + c0;
    for (int64_t pixel = 0; pixel < pixels; pixel++, acc += acc_stride, at += out_stride)
        for (int64_t i = 0; i < width; i += 16) {
            const __mmask16 m = width - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (width - i)) - 1);
            const __m512i sums = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, acc + i),
                                                  _mm512_maskz_loadu_epi32(m, correction + i));
            const __m512 v = _mm512_add_ps(_mm512_cvtepi32_ps(sums), _mm512_maskz_loadu_ps(m, bias + i));
            qc_emit512(x, &n1, &n2, v, c0 + i, m, at + i, out, residual, checked, low_counts, check_overflow, out_kind);
        }
    qc_tally_add(t1, &n1);
    if (residual) qc_tally_add(t2, &n2);
}

/* Requantize `count` int32 sums acc[0..] of consecutive pixels' channels (pixel-major, starting at channel 0)
 * into out[at..]: element i's per-channel constants are at index i (the epilogue's arrays repeat every
 * output channel count, QC_MAX_P times). v = acc + offset (bias - correction) in int32, then as qc_rows512. */
QC_AVX512 __attribute__((always_inline)) static inline void qc_flat512(
    const qc_ctx512 *x, qc_tally512 *t1, qc_tally512 *t2, const int32_t *acc, int64_t count, int64_t at, void *out,
    const int residual, const int checked, const int low_counts, const int check_overflow, const int64_t out_kind) {
    qc_tally512 n1 = {_mm512_setzero_si512(), _mm512_setzero_si512(), 0}, n2 = n1;
    /* a copy whose address never escapes: the stores through `out` (a char type) cannot change it, so its
     * constants stay in registers instead of being loaded again after every store */
    const qc_ctx512 local = *x;
    const int32_t *offset = local.first.e->offset;
#define QC_FLAT_STEP(M)                                                                                        \
    qc_emit512(&local, &n1, &n2,                                                                              \
               _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_maskz_loadu_epi32(M, acc + i),                       \
                                                   _mm512_maskz_loadu_epi32(M, offset + i))),                  \
               i, M, at + i, out, residual, checked, low_counts, check_overflow, out_kind)
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) QC_FLAT_STEP((__mmask16)0xffff);
    if (i < count) QC_FLAT_STEP((__mmask16)((1u << (count - i)) - 1));
#undef QC_FLAT_STEP
    qc_tally_add(t1, &n1);
    if (residual) qc_tally_add(t2, &n2);
}

/* qc_flat512 with the kernel's flags: the common cases with constant flags (their loops have no branches). */
QC_AVX512 static void qc_flat_any512(const qc_ctx512 *x, qc_tally512 *t1, qc_tally512 *t2, const int32_t *acc,
                                     int64_t count, int64_t at, void *out) {
    /* every combination of the first stage's flags as constants (their loops have no branches); a residual
     * add's own stage keeps its flags at run time */
#define QC_FLAT(RESIDUAL, CHECKED, LOW, OVERFLOW, KIND)                                                      \
    qc_flat512(x, t1, t2, acc, count, at, out, RESIDUAL, CHECKED, LOW, OVERFLOW, KIND)
#define QC_FLAT_KIND(R, C, L, O) (x->out_kind <= 1 ? QC_FLAT(R, C, L, O, 0) : QC_FLAT(R, C, L, O, x->out_kind))
#define QC_FLAT_O(R, C, L) (f->check_overflow ? QC_FLAT_KIND(R, C, L, 1) : QC_FLAT_KIND(R, C, L, 0))
#define QC_FLAT_L(R, C) (f->low_counts ? QC_FLAT_O(R, C, 1) : QC_FLAT_O(R, C, 0))
#define QC_FLAT_C(R) (f->checked == 2 ? QC_FLAT_L(R, 2) : f->checked == 1 ? QC_FLAT_L(R, 1) : QC_FLAT_L(R, 0))
    const qc_stage512 *f = &x->first;
    x->residual ? QC_FLAT_C(1) : QC_FLAT_C(0);
#undef QC_FLAT_C
#undef QC_FLAT_L
#undef QC_FLAT_O
#undef QC_FLAT_KIND
#undef QC_FLAT
}

/* A depthwise output row's epilogue: its ow * C sums, QC_MAX_P pixels at a time (the epilogue's arrays
 * span that many), into out[row_at..]. */
QC_AVX512 static void qc_row_epilogue512(const qc_ctx512 *x, qc_tally512 *t1, qc_tally512 *t2, const int32_t *sums,
                                         int64_t ow, int64_t C, int64_t row_at, void *out) {
    for (int64_t px = 0; px < ow; px += QC_MAX_P) {
        const int64_t count = (ow - px < QC_MAX_P ? ow - px : QC_MAX_P) * C;
        qc_flat_any512(x, t1, t2, sums + px * C, count, row_at + px * C, out);
    }
}

typedef void (*qc_tile_fn)(const uint8_t *const *, const int8_t *, int64_t, const int32_t *, int64_t, int32_t *,
                           int64_t, __mmask16);
static const qc_tile_fn qc_tiles512[2][2][QC_MAX_B] = { /* [flip][8 pixels][blocks - 1] */
    {{qc_tile512_1_1_0, qc_tile512_1_2_0, qc_tile512_1_3_0}, {qc_tile512_8_1_0, qc_tile512_8_2_0, qc_tile512_8_3_0}},
    {{qc_tile512_1_1_1, qc_tile512_1_2_1, qc_tile512_1_3_1}, {qc_tile512_8_1_1, qc_tile512_8_2_1, qc_tile512_8_3_1}},
};

/* scratch: int32[QC_MAX_P * o] (a pixel group's sums for all outputs, requantized as one flat run), then
 * QC_MAX_P * cp bytes: a 1 x 1 layer's int8 pixel group flipped to uint8 once, not per output block. */
QC_AVX512 static void qc_dense_avx512(const uint8_t *x, const int8_t *w, const qc_geometry *g, const qc_epilogue *e,
                                      const qc_residual *r, void *out, int64_t *counts, int32_t *acc) {
    const int64_t O = g->o, blocks = (O + 15) / 16, block_stride = g->kh * g->kw * (g->cp / 4) * 64;
    const __mmask16 last = O % 16 ? (__mmask16)((1u << (O % 16)) - 1) : (__mmask16)0xffff;
    const int flip_once = g->flip && g->kh == 1 && g->kw == 1 && g->sw == 1; /* a group's pixels are adjacent */
    const int flip_tiles = g->flip && !flip_once;
    /* the input offset of each K step (4 channels of one tap) from a window's first byte: one flat loop */
    const int64_t groups4 = g->cp / 4, steps = g->kh * g->kw * groups4;
    int32_t offsets[steps];
    for (int64_t u = 0; u < g->kh; u++)
        for (int64_t v = 0; v < g->kw; v++)
            for (int64_t k = 0; k < groups4; k++)
                offsets[(u * g->kw + v) * groups4 + k] = (int32_t)((u * g->dh * g->wp + v * g->dw) * g->cp + 4 * k);
    uint8_t *flipped = (uint8_t *)(acc + QC_MAX_P * O);
    const uint8_t *pix[QC_MAX_P];
    qc_ctx512 ctx;
    qc_ctx_init(&ctx, e, r);
    qc_tally512 t1 = {_mm512_setzero_si512(), _mm512_setzero_si512(), 0}, t2 = t1;
    for (int64_t n = 0; n < g->n; n++)
        for (int64_t oy = 0; oy < g->oh; oy++)
            for (int64_t ox = 0; ox < g->ow;) {
                const int P = g->ow - ox >= QC_MAX_P ? QC_MAX_P : 1;
                for (int p = 0; p < P; p++)
                    pix[p] = x + ((n * g->hp + oy * g->sh) * g->wp + (ox + p) * g->sw) * g->cp;
                if (flip_once) {
                    const int64_t bytes = P * g->cp;
                    const __m512i high = _mm512_set1_epi8((char)0x80);
                    for (int64_t i = 0; i < bytes; i += 64) {
                        const __mmask64 m = bytes - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (bytes - i)) - 1);
                        _mm512_mask_storeu_epi8(flipped + i, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, pix[0] + i), high));
                    }
                    for (int p = 0; p < P; p++) pix[p] = flipped + p * g->cp;
                }
                for (int64_t b = 0; b < blocks; b += QC_MAX_B) {
                    const int B = (int)(blocks - b < QC_MAX_B ? blocks - b : QC_MAX_B);
                    const __mmask16 m = b + B == blocks ? last : (__mmask16)0xffff;
                    qc_tiles512[flip_tiles][P == QC_MAX_P][B - 1](pix, w + b * block_stride, block_stride, offsets,
                                                                  steps, acc + b * 16, O, m);
                }
                const int64_t at = ((n * g->oh + oy) * g->ow + ox) * O, count = P * O;
                qc_flat_any512(&ctx, &t1, &t2, acc, count, at, out);
                ox += P;
            }
    qc_ctx_finish(&ctx, &t1, &t2, counts);
}

/* P output pixels of one row (`pix`: tap (0, 0) of the first; `step` bytes apart), 16 channels (mask m):
 * independent vpdpwssd chains (one chain would wait on its latency), the taps' weights in registers; the
 * int32 sums go to sums[ox + p][c0..]. TAPS: a constant for 3 x 3, else the layer's count. */
#define QC_DW_SUMS(P, TAPS, FULL)                                                                             \
    do {                                                                                                      \
        __m512i sum[P];                                                                                       \
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++) sum[p] = _mm512_setzero_si512();                  \
        _Pragma("GCC unroll 9") for (int64_t t = 0; t < (TAPS); t++)                                          \
            _Pragma("GCC unroll 8") for (int p = 0; p < P; p++)                                               \
                sum[p] = _mm512_dpwssd_epi32(sum[p], _mm512_cvtepu8_epi32(QC_DW_LOAD(pix + p * step + offsets[t], FULL)), \
                                             wv[t]);                                                          \
        _Pragma("GCC unroll 8") for (int p = 0; p < P; p++)                                                   \
            _mm512_mask_storeu_epi32(sums + (ox + p) * C + c0, m, sum[p]);                                    \
    } while (0)
/* 16 activation bytes: a whole block of channels unmasked (the load folds into its use), else masked */
#define QC_DW_LOAD(A, FULL) ((FULL) ? _mm_loadu_si128((const __m128i *)(A)) : _mm_maskz_loadu_epi8(m, (A)))

/* Depthwise, channels-last, the input unpadded: a tap outside it reads `zero_row` (C bytes at the zero
 * point), so every output sums all its taps and the correction is zero point * sum(w), as for dense
 * layers. Per 16 channels the taps' weights stay in registers; each tap is one vpdpwssd of the
 * zero-extended activations with the weights in the low int16 half of each lane (the high half 0, so
 * the lane's product is exactly x * w). Interior pixels run 4 at a time (independent chains). An output
 * row's sums go to `sums` (int32[ow * C]), then one flat epilogue pass requantizes the row: the sum
 * loops then hold no call or branch of the epilogue, and keep their registers. */
QC_AVX512 static void qc_depthwise_avx512(const uint8_t *x, const uint8_t *zero_row, const int32_t *w,
                                          const qc_geometry *g, const qc_epilogue *e, const qc_residual *r, void *out,
                                          int64_t *counts, int32_t *sums) {
    /* locals: stores through `out` (a char type) could alias *g */
    const int64_t C = g->o, kh = g->kh, kw = g->kw, taps = kh * kw, n_count = g->n, oh = g->oh, ow = g->ow;
    const int64_t H = g->hp, W = g->wp, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const int64_t top = g->pad_top, left = g->pad_left, step = sw * C;
    const int three = kh == 3 && kw == 3;
    qc_ctx512 ctx;
    qc_ctx_init(&ctx, e, r);
    qc_tally512 t1 = {_mm512_setzero_si512(), _mm512_setzero_si512(), 0}, t2 = t1;
    int64_t offsets[QC_DW_TAPS];
    for (int64_t u = 0; u < kh; u++)
        for (int64_t v = 0; v < kw; v++) offsets[u * kw + v] = (u * dh * W + v * dw) * C;
    /* output columns whose taps all lie inside the input: [x_lo, x_hi) */
    int64_t x_lo = (left + sw - 1) / sw, x_hi = (W - 1 - (kw - 1) * dw + left) / sw + 1;
    if (W - 1 - (kw - 1) * dw + left < 0) x_hi = 0;
    if (x_hi > ow) x_hi = ow;
    if (x_lo > x_hi) x_lo = x_hi;
    __m512i wv[QC_DW_TAPS];
    const uint8_t *tap[QC_DW_TAPS];
    for (int64_t n = 0; n < n_count; n++)
        for (int64_t oy = 0; oy < oh; oy++) {
            const int64_t y0 = oy * sh - top;
            const int rows_inside = y0 >= 0 && y0 + (kh - 1) * dh < H;
            /* each block of 16 channels in turn: the row's input rows stay in L1 across blocks */
            for (int64_t c0 = 0; c0 < C; c0 += 16) {
                const __mmask16 m = C - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c0)) - 1);
                for (int64_t t = 0; t < taps; t++) wv[t] = _mm512_maskz_loadu_epi32(m, w + t * C + c0);
                const uint8_t *row = x + ((n * H + y0) * W - left) * C + c0; /* tap (0, 0) of output column 0 */
                for (int64_t ox = 0; ox < ow;) {
                    const uint8_t *pix = row + ox * step;
                    if (rows_inside && ox >= x_lo && ox + 8 <= x_hi && three && m == 0xffff) {
                        QC_DW_SUMS(8, 9, 1);
                        ox += 8;
                    } else if (rows_inside && ox >= x_lo && ox + 4 <= x_hi) {
                        if (three && m == 0xffff)
                            QC_DW_SUMS(4, 9, 1);
                        else if (three)
                            QC_DW_SUMS(4, 9, 0);
                        else
                            QC_DW_SUMS(4, taps, 0);
                        ox += 4;
                    } else if (rows_inside && ox >= x_lo && ox < x_hi) {
                        QC_DW_SUMS(1, taps, 0);
                        ox += 1;
                    } else { /* a border pixel: each tap's own pointer */
                        for (int64_t u = 0; u < kh; u++)
                            for (int64_t v = 0; v < kw; v++) {
                                const int64_t iy = y0 + u * dh, ix = ox * sw - left + v * dw;
                                tap[u * kw + v] = (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                                      ? x + ((n * H + iy) * W + ix) * C + c0
                                                      : zero_row + c0;
                            }
                        __m512i sum = _mm512_setzero_si512();
                        for (int64_t t = 0; t < taps; t++)
                            sum = _mm512_dpwssd_epi32(sum, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, tap[t])),
                                                      wv[t]);
                        _mm512_mask_storeu_epi32(sums + ox * C + c0, m, sum);
                        ox += 1;
                    }
                }
            }
            const int64_t row_at = (n * oh + oy) * ow * C;
            qc_row_epilogue512(&ctx, &t1, &t2, sums, ow, C, row_at, out);
        }
    qc_ctx_finish(&ctx, &t1, &t2, counts);
}

/* ---- depthwise 3 x 3, stride 1 along x: four taps per vpdpbusd ----
 * Each input row is rearranged once into groups of 4 pixels: for every channel their 4 bytes side by side
 * ([group][channels, rounded up to 16][4]). One vpdpbusd of a group then sums, per channel, the products
 * of up to 4 horizontal taps: an output whose first tap is pixel 4g + ph (ph: its phase) needs group g
 * (taps 0..3 - ph) and, for ph >= 2, group g + 1; its weights per (phase, kernel row, group) are 4 int8
 * per channel with zeros where no tap falls. Four outputs (phases 0-3) share two group loads per kernel
 * row: 18 vpdpbusd for what takes 36 vpdpwssd and 36 widening loads one tap at a time. The sums are the
 * same integers. Scratch after the row's sums: 3 rearranged rows (a ring over input rows), the weights. */
#define QC_QUAD_GROUPS(W) ((W) / 4 + 2) /* groups per rearranged row: every pixel, and one past the last */

/* 3 x 3, dilation 1, stride 1 along x; the input padded or not */
static int qc_depthwise_quad_fits(const qc_geometry *g) {
    return g->kh == 3 && g->kw == 3 && g->dh == 1 && g->dw == 1 && g->sw == 1;
}

/* The rows are those of the padded input (ow + 2 pixels: stride 1, 3 taps), whether or not it is stored padded */
static int64_t qc_quad_scratch_bytes(const qc_geometry *g) {
    const int64_t c16 = (g->o + 15) / 16 * 16;
    return 3 * QC_QUAD_GROUPS(g->ow + 2) * c16 * 4 + (c16 / 16) * 24 * 64 + 64;
}

/* Row yp of image n's padded input (channels-last, C channels) rearranged into `quad`: pixels of the
 * stored input where it has them (offset by its missing padding), else the zero point. */
QC_AVX512 static void qc_quad_row(const uint8_t *x, const uint8_t *zero_row, int64_t n, int64_t yp, const qc_geometry *g,
                                  uint8_t *quad) {
    const int64_t C = g->o, W = g->wp, c16 = (C + 15) / 16 * 16, groups = QC_QUAD_GROUPS(g->ow + 2);
    const int64_t y = yp - g->pad_top, left = g->pad_left;
    const int inside = y >= 0 && y < g->hp;
    const uint8_t *row = x + (n * g->hp + (inside ? y : 0)) * W * C;
    for (int64_t q = 0; q < groups; q++)
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            const __mmask16 m = C - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c0)) - 1);
            __m128i p[4];
            for (int i = 0; i < 4; i++) { /* outside the stored input: the zero point */
                const int64_t px = 4 * q + i - left;
                p[i] = _mm_maskz_loadu_epi8(m, (inside && px >= 0 && px < W ? row + px * C : zero_row) + c0);
            }
            const __m128i ab_lo = _mm_unpacklo_epi8(p[0], p[1]), ab_hi = _mm_unpackhi_epi8(p[0], p[1]);
            const __m128i cd_lo = _mm_unpacklo_epi8(p[2], p[3]), cd_hi = _mm_unpackhi_epi8(p[2], p[3]);
            uint8_t *to = quad + (q * c16 + c0) * 4;
            _mm_storeu_si128((__m128i *)to, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128((__m128i *)(to + 16), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128((__m128i *)(to + 32), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128((__m128i *)(to + 48), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
}

QC_AVX512 static void qc_depthwise_quad512(const uint8_t *x, const uint8_t *zero_row, const int32_t *w,
                                           const qc_geometry *g, const qc_epilogue *e, const qc_residual *r,
                                           void *out, int64_t *counts, int32_t *sums) {
    const int64_t C = g->o, c16 = (C + 15) / 16 * 16, blocks = c16 / 16, oh = g->oh, ow = g->ow, sh = g->sh;
    const int64_t row_bytes = QC_QUAD_GROUPS(ow + 2) * c16 * 4;
    uint8_t *base = (uint8_t *)(sums + ow * C);
    base += (64 - (uintptr_t)base % 64) % 64;
    uint8_t *ring = base;
    int8_t *weights = (int8_t *)(ring + 3 * row_bytes); /* [block][phase][kernel row][group 0/1][16][4] */
    for (int64_t b = 0; b < blocks; b++)
        for (int ph = 0; ph < 4; ph++)
            for (int u = 0; u < 3; u++)
                for (int j = 0; j < 2; j++)
                    for (int lane = 0; lane < 16; lane++)
                        for (int pos = 0; pos < 4; pos++) {
                            const int v = 4 * j + pos - ph; /* the tap this byte of the group holds */
                            const int64_t c = 16 * b + lane;
                            weights[((((b * 4 + ph) * 3 + u) * 2 + j) * 16 + lane) * 4 + pos] =
                                (v >= 0 && v < 3 && c < C) ? (int8_t)(w[(u * 3 + v) * C + c] & 0xff) : 0;
                        }
    qc_ctx512 ctx;
    qc_ctx_init(&ctx, e, r);
    qc_tally512 t1 = {_mm512_setzero_si512(), _mm512_setzero_si512(), 0}, t2 = t1;
    for (int64_t n = 0; n < g->n; n++) {
        int64_t ready = -1; /* input rows up to this one are in the ring */
        for (int64_t oy = 0; oy < oh; oy++) {
            const int64_t y0 = oy * sh;
            for (int64_t y = ready + 1 > y0 ? ready + 1 : y0; y <= y0 + 2; y++)
                qc_quad_row(x, zero_row, n, y, g, ring + (y % 3) * row_bytes);
            ready = y0 + 2;
            const uint8_t *rows[3] = {ring + (y0 % 3) * row_bytes, ring + ((y0 + 1) % 3) * row_bytes,
                                      ring + ((y0 + 2) % 3) * row_bytes};
            for (int64_t b = 0; b < blocks; b++) {
                const int64_t c0 = 16 * b;
                const __mmask16 m = C - c0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - c0)) - 1);
                const int8_t *wb = weights + b * 4 * 3 * 2 * 64;
                __m512i wv[4][3][2];
                for (int ph = 0; ph < 4; ph++)
                    for (int u = 0; u < 3; u++)
                        for (int j = 0; j < 2; j++) wv[ph][u][j] = _mm512_loadu_si512(wb + ((ph * 3 + u) * 2 + j) * 64);
                for (int64_t ox = 0; ox < ow; ox += 4) { /* output ox + ph starts at pixel ox + ph: group ox / 4 */
                    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                                      _mm512_setzero_si512()};
                    const int64_t at = ((ox / 4) * c16 + c0) * 4;
                    for (int u = 0; u < 3; u++) {
                        const __m512i g0 = _mm512_loadu_si512(rows[u] + at), g1 = _mm512_loadu_si512(rows[u] + at + c16 * 4);
                        acc[0] = _mm512_dpbusd_epi32(acc[0], g0, wv[0][u][0]);
                        acc[1] = _mm512_dpbusd_epi32(acc[1], g0, wv[1][u][0]);
                        acc[2] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[2], g0, wv[2][u][0]), g1, wv[2][u][1]);
                        acc[3] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[3], g0, wv[3][u][0]), g1, wv[3][u][1]);
                    }
                    const int64_t valid = ow - ox < 4 ? ow - ox : 4;
                    for (int i = 0; i < valid; i++) _mm512_mask_storeu_epi32(sums + (ox + i) * C + c0, m, acc[i]);
                }
            }
            const int64_t row_at = (n * oh + oy) * ow * C;
            qc_row_epilogue512(&ctx, &t1, &t2, sums, ow, C, row_at, out);
        }
    }
    qc_ctx_finish(&ctx, &t1, &t2, counts);
}

/* ---- AMX (Sapphire Rapids and later) ------------------------------------------------------------ */
#if defined(__linux__)
#define QC_HAVE_AMX 1
#define QC_AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define QC_ARCH_REQ_XCOMP_PERM 0x1023
#define QC_XFEATURE_XTILEDATA 18

/* 1 when this CPU has AMX-INT8 and the kernel lets this process use its tile registers (asked once). */
static int qc_amx_ready(void) {
    static int state = -1;
    if (state < 0) {
        unsigned a, b, c, d;
        int ready = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 25));
        state = ready && syscall(SYS_arch_prctl, QC_ARCH_REQ_XCOMP_PERM, QC_XFEATURE_XTILEDATA) == 0;
    }
    return state;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} qc_tile_config;

/* Output blocks per pass: tiles 4..7 hold 4 x (16 pixels x 16 outputs) int32 sums. */
#define QC_AMX_BLOCKS 4
#define QC_AMX_DOT(T, TILE) /* TILE = 4 + T: the tile intrinsics take literal register numbers */          \
    do {                                                                                                      \
        _tile_loadd(1, wk + (ob0 + (T)) * 1024, 64);                                                          \
        _tile_dpbusd(TILE, 0, 1);                                                                             \
    } while (0)

/* Dense convolution on AMX tiles (dilation 1 along x): for 16 output pixels of a row, kernel row u's
 * taps are kw * Cp contiguous bytes of the padded input per pixel, read as 64-byte K chunks (tile 0:
 * 16 pixels, stride sw * Cp; bytes past the taps meet zero weights); tile 1 holds a chunk's weights for
 * 16 outputs ([16 K groups][16 outputs][4 bytes]); tdpbusd sums u8 x s8 exactly in int32. The input
 * needs 64 * nk + 16 * sw * Cp bytes of slack past its end (rows past the last pixel are read, then
 * dropped). wt: [kh][nk][blocks][16][16][4]. */
QC_AMX static void qc_dense_amx(const uint8_t *x, const int8_t *wt, const qc_geometry *g, const qc_epilogue *e,
                                const qc_residual *r, void *out, int64_t *counts) {
    const int64_t Cp = g->cp, O = g->o, kh = g->kh, oh = g->oh, ow = g->ow, hp = g->hp, wp = g->wp;
    const int64_t sh = g->sh, sw = g->sw, dh = g->dh, n_count = g->n;
    const int64_t nk = (g->kw * Cp + 63) / 64, blocks = (O + 15) / 16, step = sw * Cp;
    qc_tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    const int used[6] = {0, 1, 4, 5, 6, 7};
    for (int i = 0; i < 6; i++) config.colsb[used[i]] = 64, config.rows[used[i]] = 16;
    _tile_loadconfig(&config);
    int32_t acc[16 * QC_AMX_BLOCKS * 16];
    qc_ctx512 ctx;
    qc_ctx_init(&ctx, e, r);
    qc_tally512 t1 = {_mm512_setzero_si512(), _mm512_setzero_si512(), 0}, t2 = t1;
    const int residual = r != NULL;
    for (int64_t n = 0; n < n_count; n++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox0 = 0; ox0 < ow; ox0 += 16) {
                const int64_t P = ow - ox0 < 16 ? ow - ox0 : 16;
                for (int64_t ob0 = 0; ob0 < blocks; ob0 += QC_AMX_BLOCKS) {
                    const int64_t B = blocks - ob0 < QC_AMX_BLOCKS ? blocks - ob0 : QC_AMX_BLOCKS;
                    _tile_zero(4);
                    _tile_zero(5);
                    _tile_zero(6);
                    _tile_zero(7);
                    for (int64_t u = 0; u < kh; u++) {
                        const uint8_t *base = x + ((n * hp + oy * sh + u * dh) * wp + ox0 * sw) * Cp;
                        for (int64_t k = 0; k < nk; k++) {
                            const int8_t *wk = wt + (u * nk + k) * blocks * 1024;
                            _tile_loadd(0, base + 64 * k, step);
                            QC_AMX_DOT(0, 4);
                            if (B > 1) QC_AMX_DOT(1, 5);
                            if (B > 2) QC_AMX_DOT(2, 6);
                            if (B > 3) QC_AMX_DOT(3, 7);
                        }
                    }
                    const int64_t stride = QC_AMX_BLOCKS * 16 * (int64_t)sizeof(int32_t);
                    _tile_stored(4, acc, stride);
                    if (B > 1) _tile_stored(5, acc + 16, stride);
                    if (B > 2) _tile_stored(6, acc + 32, stride);
                    if (B > 3) _tile_stored(7, acc + 48, stride);
                    const int64_t c0 = ob0 * 16, width = O - c0 < B * 16 ? O - c0 : B * 16;
                    const int64_t at = ((n * oh + oy) * ow + ox0) * O + c0;
                    const qc_stage512 *f = &ctx.first;
                    if (residual)
                        qc_rows512(&ctx, &t1, &t2, acc, P, QC_AMX_BLOCKS * 16, width, c0, at, O, out, 1, f->checked,
                                   f->low_counts, f->check_overflow, ctx.out_kind);
                    else
                        qc_rows512(&ctx, &t1, &t2, acc, P, QC_AMX_BLOCKS * 16, width, c0, at, O, out, 0, f->checked,
                                   f->low_counts, f->check_overflow, ctx.out_kind);
                }
            }
    _tile_release();
    qc_ctx_finish(&ctx, &t1, &t2, counts);
}
#undef QC_AMX_DOT
#endif
#endif

/* ---- entry points ---------------------------------------------------------------------------- */

#ifndef QC_SOURCE_SHA256
#define QC_SOURCE_SHA256 "unknown"
#endif

/* The sha256 of this file when it was built (setup.py defines it). */
const char *qc_source_sha256(void) { return QC_SOURCE_SHA256; }

/* Bit 0: portable (always); bit 1: AVX-512 VNNI runs on this CPU; bit 2: AMX-INT8 too (dense layers). */
int64_t qc_variants(void) {
    static int64_t known = 0; /* every kernel call checks its variant: the CPU is asked once (a race only
                                 computes the same value twice) */
    if (known) return known;
    int64_t variants = 1;
#ifdef QC_HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        variants |= 2;
#ifdef QC_HAVE_AMX
    if ((variants & 2) && qc_amx_ready()) variants |= 4;
#endif
#endif
    known = variants;
    return variants;
}

/* Every entry point: variant 1 portable, 2 AVX-512 VNNI, 4 AMX (qc_dense only; weights in its layout); counts: int64[4] (the requantize's saturations and
 * overflows, then the residual add's); r: the residual add the output feeds, or NULL (AVX-512 and AMX only,
 * the kernel's rule float32, the add's any). Returns 0; -1: the variant does not run here; -2: the rule or geometry is not covered. */

/* Dense, padded input; scratch: int32[QC_MAX_P * o] and QC_MAX_P * cp bytes. */
int64_t qc_dense(int64_t variant, const uint8_t *x, const int8_t *w, const qc_geometry *g, const qc_epilogue *e,
                 const qc_residual *r, void *out, int64_t *counts, int32_t *scratch) {
    if (r != NULL && (variant == 1 || e->rule == 0)) return -2; /* the add's rule: any (vector kernels) */
    if (variant == 1) {
        qc_dense_portable(x, w, g, e, out, counts, scratch);
        return 0;
    }
#ifdef QC_HAVE_AMX
    if (variant == 4 && (qc_variants() & 4)) {
        if (e->rule == 0 || g->dw != 1 || g->flip) return -2;
        qc_dense_amx(x, w, g, e, r, out, counts);
        return 0;
    }
#endif
#ifdef QC_HAVE_X86
    if (variant == 2 && (qc_variants() & 2)) {
        if (e->rule == 0)
            qc_dense_portable(x, w, g, e, out, counts, scratch); /* the int64 rule has no vector form here */
        else
            qc_dense_avx512(x, w, g, e, r, out, counts, scratch);
        return 0;
    }
#endif
    return -1;
}

/* Depthwise, unpadded input, taps outside skipped; weights int16 [kh * kw][C]; portable only, no residual. */
int64_t qc_depthwise(int64_t variant, const uint8_t *x, int64_t zero_u8, const int16_t *w, const qc_geometry *g,
                     const qc_epilogue *e, void *out, int64_t *counts) {
    if (variant != 1) return -1;
    qc_depthwise_portable(x, zero_u8, w, g, e, out, counts);
    return 0;
}

/* Depthwise, unpadded or padded input; zero_row: C bytes at the zero point (what taps outside read); weights
 * [kh * kw][C] as int32 lanes holding (uint16) w; the correction: zero point * sum(w); sums: int32[ow * C]
 * scratch. AVX-512 VNNI only, float32 rules, kh * kw <= 25. */
/* The int32 work elements qc_depthwise_fast needs for this geometry: a row's sums, and the 3 x 3 kernel's scratch. */
int64_t qc_depthwise_fast_work(const qc_geometry *g) {
    int64_t extra = 0;
#ifdef QC_HAVE_X86
    if (qc_depthwise_quad_fits(g)) extra = (qc_quad_scratch_bytes(g) + 3) / 4;
#endif
    return g->ow * g->o + extra;
}

int64_t qc_depthwise_fast(int64_t variant, const uint8_t *x, const uint8_t *zero_row, const int32_t *w,
                          const qc_geometry *g, const qc_epilogue *e, const qc_residual *r, void *out,
                          int64_t *counts, int32_t *sums) {
    if (e->rule == 0 || g->kh * g->kw > QC_DW_TAPS) return -2;
#ifdef QC_HAVE_X86
    if (variant == 2 && (qc_variants() & 2)) {
        if (qc_depthwise_quad_fits(g))
            qc_depthwise_quad512(x, zero_row, w, g, e, r, out, counts, sums);
        else
            qc_depthwise_avx512(x, zero_row, w, g, e, r, out, counts, sums);
        return 0;
    }
#endif
    (void)variant, (void)x, (void)zero_row, (void)w, (void)g, (void)out, (void)counts, (void)sums;
    return -1;
}

/* The uint8 input a kernel reads: src (n, h, w, c) integers of `kind` (0 uint8, 1 int8, 2 int16, 3 int32,
 * 4 int64) at element strides `strides` (image, row, pixel, channel), plus `offset`, into the interior of
 * dst [n, hp, wp, cp] at (top, left); dst's borders and extra channels keep what they hold (the zero
 * point). Values must fit uint8 after the offset (the caller's plan proves it). */
int64_t qc_pad_copy(const void *src, int64_t kind, int64_t n, int64_t h, int64_t w, int64_t c, const int64_t *strides,
                    int64_t offset, uint8_t *dst, int64_t hp, int64_t wp, int64_t cp, int64_t top, int64_t left) {
    const int64_t si = strides[0], sr = strides[1], sp = strides[2], sc = strides[3];
    for (int64_t b = 0; b < n; b++)
        for (int64_t y = 0; y < h; y++) {
            uint8_t *row = dst + ((b * hp + y + top) * wp + left) * cp;
            if (kind == 0 && offset == 0 && sc == 1 && sp == c) { /* channels-last uint8: plain copies */
                const uint8_t *from = (const uint8_t *)src + b * si + y * sr;
                if (cp == c)
                    memcpy(row, from, (size_t)(w * c));
                else
                    for (int64_t x = 0; x < w; x++) memcpy(row + x * cp, from + x * c, (size_t)c);
                continue;
            }
            for (int64_t x = 0; x < w; x++)
                for (int64_t k = 0; k < c; k++) {
                    const int64_t at = b * si + y * sr + x * sp + k * sc;
                    int64_t v;
                    switch (kind) {
                    case 0: v = ((const uint8_t *)src)[at]; break;
                    case 1: v = ((const int8_t *)src)[at]; break;
                    case 2: v = ((const int16_t *)src)[at]; break;
                    case 3: v = ((const int32_t *)src)[at]; break;
                    default: v = ((const int64_t *)src)[at]; break;
                    }
                    row[x * cp + k] = (uint8_t)(v + offset);
                }
        }
    return 0;
}

/* A recorded run of kernel calls (hwsim.native_program): `count` rows of QC_CALL_WIDTH int64s, each the
 * call's kind (QC_CALL_*), its counts array or 0 (zeroed first, as the caller does before a single call),
 * then its arguments in order, pointers as integers. One call from Python runs a chain of layers without
 * the interpreter (and its lock) between them. Returns 0, or the first failing call's status. */
enum { QC_CALL_PAD_COPY, QC_CALL_DENSE, QC_CALL_DEPTHWISE, QC_CALL_DEPTHWISE_FAST, QC_CALL_KINDS };
#define QC_CALL_WIDTH 18
#define QC_P(i) ((void *)(intptr_t)a[i])

int64_t qc_run(const int64_t *calls, int64_t count) {
    for (int64_t i = 0; i < count; i++) {
        const int64_t *row = calls + i * QC_CALL_WIDTH, *a = row + 2;
        int64_t *counts = (int64_t *)(intptr_t)row[1], status;
        if (counts != NULL) memset(counts, 0, 4 * sizeof(int64_t));
        switch (row[0]) {
        case QC_CALL_PAD_COPY:
            status = qc_pad_copy(QC_P(0), a[1], a[2], a[3], a[4], a[5], QC_P(6), a[7], QC_P(8), a[9], a[10], a[11],
                                 a[12], a[13]);
            break;
        case QC_CALL_DENSE:
            status = qc_dense(a[0], QC_P(1), QC_P(2), QC_P(3), QC_P(4), QC_P(5), QC_P(6), QC_P(7), QC_P(8));
            break;
        case QC_CALL_DEPTHWISE:
            status = qc_depthwise(a[0], QC_P(1), a[2], QC_P(3), QC_P(4), QC_P(5), QC_P(6), QC_P(7));
            break;
        case QC_CALL_DEPTHWISE_FAST:
            status = qc_depthwise_fast(a[0], QC_P(1), QC_P(2), QC_P(3), QC_P(4), QC_P(5), QC_P(6), QC_P(7), QC_P(8),
                                       QC_P(9));
            break;
        default: status = -3;
        }
        if (status != 0) return status;
    }
    return 0;
}
