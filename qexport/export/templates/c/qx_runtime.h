/* qexport C inference runtime: integer kernels for every op and weight format of the qexport IR.
 *
 * Portable C99, no heap, no floating point. Tensors are per-sample arrays in a static arena owned by the
 * generated model, each stored in the smallest container of its IR type (qx_type_t: int8 up to int32).
 * Weights are bit-packed rows (one per output channel, each starting on a byte boundary).
 * conv2d / linear layers whose activations fit 8 bits and whose weights are integers in [-128, 127]
 * (int_affine, codebook, pot, apot) run as dot products of offset activations (uint8, im2col from a
 * padded channels-last copy of the input) with int8 weights into int32, which compilers vectorize;
 * the others use the general per-format product. Every rounding is round half to even, as in the IR
 * reference (qexport/reference). */
#ifndef QX_RUNTIME_H
#define QX_RUNTIME_H

#include <stdint.h>

#include "qx_config.h"

/* tensor element containers */
enum { QX_I8 = 0, QX_U8 = 1, QX_I16 = 2, QX_U16 = 3, QX_I32 = 4 };
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

/* The fast conv2d / linear path ("dot"): acc = sum(u * w) - x_off * row_sum + bias, where u = x - x_min
 * (uint8) and x_off = x_zp - x_min is a centred zero (the padding value); the exporter proves every
 * partial sum fits int32 (in any order). Weights come from `direct` (8-bit int_affine weights with zero
 * point 0 are the packed bytes themselves) or are unpacked once per call into the scratch `wbuf`.
 * Row layout: one row of K = k_h x k_w x cin_g values per output channel, four rows per pass.
 * Blocked layout (`blocked`, conv2d with at least 8 outputs per group): per group, output channels in
 * blocks of QX_BLOCK_N = 16 and K padded with zero weights to k_pad (a multiple of 4), stored
 * [group][block][k_pad / 4][16 outputs][4 K values], so 4 activation bytes broadcast against 64 weight
 * bytes add into 16 int32 lanes (the vpdpbusd / udot / sdot shape); zero rows pad the last block. A
 * blocked layer with direct weights stores its packed bytes in this layout (the general path never
 * reads them). A blocked conv2d whose window rows are runs of a multiple of 4 bytes (k_w x cin_g bytes
 * undilated, else cin_g) reads its K values from the padded copy in place (`im2col` 0); others build
 * im2col rows of k_pad bytes. */
#define QX_BLOCK_N 16
#define QX_TILE 8 /* output pixels per pass of the blocked kernel (im2col blocks hold a multiple of it) */
typedef struct {
    int32_t enabled;
    const int8_t *direct; /* or NULL */
    const int32_t *row_sum;
    int32_t x_min, x_off;
    int32_t block; /* output pixels per im2col block (the scratch `cols` holds block x K bytes) */
    int32_t padded_h, padded_w; /* conv2d: the padded channels-last input copy (scratch `padded`) */
    int32_t blocked, k_pad;     /* the blocked weight layout; im2col rows are then k_pad bytes apart */
    int32_t im2col; /* blocked conv2d: 1 = through im2col rows, 0 = the padded copy read in place */
} qx_dot_t;

typedef struct {
    const qx_weight_t *weight;
    const int32_t *bias; /* or NULL */
    int32_t in_c, in_h, in_w, out_c, out_h, out_w, k_h, k_w;
    int32_t stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups;
    int32_t x_zp, x_type;
    qx_dot_t dot;
} qx_conv_t;

typedef struct {
    const qx_weight_t *weight;
    const int32_t *bias;
    int32_t in_n, out_n, x_zp, x_type;
    qx_dot_t dot;
} qx_linear_t;

typedef struct {
    int32_t n, zp_a, zp_b, mul_a, mul_b, a_type, b_type;
} qx_add_t;

typedef struct {
    int32_t channels, inner; /* the accumulator is channels x inner values per sample */
    int32_t n_params;        /* 1 (per tensor) or channels */
    const int32_t *multiplier;
    const int32_t *shift;
    int32_t zp_out, clip_min, clip_max, mode;
    int32_t acc_type, num_type, den_type, y_type;
} qx_requant_t;

typedef struct {
    int32_t channels, in_h, in_w, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int32_t count_include_pad, zp, pad_value, x_type, y_type;
} qx_pool_t;

/* scratch buffers owned by the model (sizes from the exporter) */
typedef struct {
    int32_t *codes; /* one unpacked weight row (general path) */
    uint8_t *cols;  /* im2col block of offset activations (dot path) */
    int8_t *wbuf;   /* a layer's weights as int8 (dot path without direct weights) */
    uint8_t *padded; /* conv2d input group, padded, channels last, offset values (dot path) */
} qx_scratch_t;

int32_t qx_load(const void *x, int32_t type, int32_t i);
void qx_store(void *y, int32_t type, int32_t i, int32_t v);
void qx_unpack_row(const qx_weight_t *w, int32_t row, int32_t *codes);
void qx_conv2d(const qx_conv_t *p, const void *x, int32_t *y, const qx_scratch_t *s);
void qx_linear(const qx_linear_t *p, const void *x, int32_t *y, const qx_scratch_t *s);
void qx_add(const qx_add_t *p, const void *a, const void *b, int32_t *y);
int qx_requantize(const qx_requant_t *p, const void *acc, const void *num, const void *den, void *y);
void qx_relu(int32_t n, int32_t zp, int32_t type, const void *x, void *y);
void qx_clip(int32_t n, int32_t lo, int32_t hi, int32_t x_type, int32_t y_type, const void *x, void *y);
void qx_maxpool(const qx_pool_t *p, const void *x, void *y);
void qx_avgpool(const qx_pool_t *p, const void *x, void *y);
void qx_global_avgpool(int32_t channels, int32_t hw, int32_t zp, int32_t x_type, int32_t y_type, const void *x,
                       void *y);
void qx_copy(int32_t n, int32_t x_type, int32_t y_type, const void *x, void *y);
void qx_concat_part(int32_t outer, int32_t chunk, int32_t out_chunk, int32_t offset, int32_t x_type, int32_t y_type,
                    const void *x, void *y);

int64_t qx_round_shift(int64_t value, int32_t shift);
int64_t qx_round_div(int64_t value, int64_t divisor);

#endif
