/* qexport C inference runtime: integer kernels for every op and weight format of the qexport IR.
 *
 * Portable C99, no heap, no floating point. Tensors are per-sample arrays of qx_act_t in a static
 * arena owned by the generated model; weights are bit-packed rows (one per output channel, each
 * starting on a byte boundary) that the kernels unpack into a small code buffer, one row at a time.
 * Every rounding is round half to even, as in the IR reference (qexport/reference). */
#ifndef QX_RUNTIME_H
#define QX_RUNTIME_H

#include <stdint.h>

#include "qx_config.h"

#ifdef QX_ACT64
typedef int64_t qx_act_t; /* storage of every tensor element */
#else
typedef int32_t qx_act_t;
#endif
#ifdef QX_ACC64
typedef int64_t qx_acc_t; /* partial sums of conv2d / linear */
#else
typedef int32_t qx_acc_t;
#endif
#ifdef QX_LUT64
typedef int64_t qx_lut_t; /* entries of the powers-of-sqrt(2) product tables */
#else
typedef int32_t qx_lut_t;
#endif

enum { QX_OK = 0, QX_ERR_INPUT_RANGE = 1, QX_ERR_DIVISOR = 2 };
enum { QX_INT_AFFINE = 0, QX_POT = 1, QX_POST = 2, QX_APOT = 3, QX_CODEBOOK = 4 };
enum { QX_STATIC = 0, QX_DYN_MUL = 1, QX_DYN_DIV = 2, QX_DYN_MULDIV = 3 };

/* A packed weight: rows x row_len elements of `bits` bits each, LSB first.
 *  int_affine: the value (two's complement when is_signed); integer = value - zero_point[row]
 *  codebook:   the level index; integer = levels[row * n_levels + index] (or levels[index] if shared)
 *  pot:        m | neg << ebits, m = 0 for a zero weight else max_exponent - exponent + 1 (the shift + 1)
 *  post:       m | neg << ebits, m = 0 for a zero weight else exponent + 1
 *  apot:       neg, then `terms` fields of ebits bits: 0 absent, else max_exponent - exponent + 1 */
typedef struct {
    uint8_t format;
    uint8_t bits;
    uint8_t ebits;
    uint8_t terms;
    uint8_t is_signed;
    uint8_t shared_levels;
    int32_t rows;
    int32_t row_len;
    int32_t row_bytes;
    const uint8_t *packed;
    const int32_t *zero_point; /* int_affine: one per row */
    const int32_t *levels;     /* codebook */
    int32_t n_levels;
    int32_t frac_bits;   /* post: lut_frac_bits */
    const qx_lut_t *lut; /* post: [(max_exponent + 1) / 2][lut_len], odd exponent e in row e / 2 */
    int32_t lut_len;
    int32_t x_min; /* post: the LUT's first activation value (zero point removed) */
} qx_weight_t;

typedef struct {
    const qx_weight_t *weight;
    const int32_t *bias; /* or NULL */
    int32_t in_c, in_h, in_w, out_c, out_h, out_w, k_h, k_w;
    int32_t stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups;
    int32_t x_zp;
} qx_conv_t;

typedef struct {
    const qx_weight_t *weight;
    const int32_t *bias;
    int32_t in_n, out_n, x_zp;
} qx_linear_t;

typedef struct {
    int32_t n, zp_a, zp_b, mul_a, mul_b;
} qx_add_t;

typedef struct {
    int32_t channels, inner; /* the accumulator is channels x inner values per sample */
    int32_t n_params;        /* 1 (per tensor) or channels */
    const int32_t *multiplier;
    const int32_t *shift;
    int32_t zp_out, clip_min, clip_max, mode;
} qx_requant_t;

typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int32_t count_include_pad, zp, pad_value;
} qx_pool_t;

void qx_unpack_row(const qx_weight_t *w, int32_t row, int32_t *codes);
void qx_conv2d(const qx_conv_t *p, const qx_act_t *x, qx_act_t *y, int32_t *codes);
void qx_linear(const qx_linear_t *p, const qx_act_t *x, qx_act_t *y, int32_t *codes);
void qx_add(const qx_add_t *p, const qx_act_t *a, const qx_act_t *b, qx_act_t *y);
int qx_requantize(const qx_requant_t *p, const qx_act_t *acc, const qx_act_t *num, const qx_act_t *den, qx_act_t *y);
void qx_relu(int32_t n, int32_t zp, const qx_act_t *x, qx_act_t *y);
void qx_clip(int32_t n, int32_t lo, int32_t hi, const qx_act_t *x, qx_act_t *y);
void qx_maxpool(const qx_pool_t *p, const qx_act_t *x, qx_act_t *y);
void qx_avgpool(const qx_pool_t *p, const qx_act_t *x, qx_act_t *y);
void qx_global_avgpool(int32_t channels, int32_t hw, int32_t zp, const qx_act_t *x, qx_act_t *y);
void qx_copy(int32_t n, const qx_act_t *x, qx_act_t *y);
void qx_concat_part(int32_t outer, int32_t chunk, int32_t out_chunk, int32_t offset, const qx_act_t *x, qx_act_t *y);

int64_t qx_round_shift(int64_t value, int32_t shift);
int64_t qx_round_div(int64_t value, int64_t divisor);

#endif
