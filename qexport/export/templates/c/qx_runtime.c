/* qexport C inference runtime (see qx_runtime.h). Integer arithmetic only; well-defined C99:
 * no shift of a negative value, no signed overflow (the exporter proves the accumulator bounds). */
#include "qx_runtime.h"

static uint32_t qx_field(const uint8_t *bytes, uint32_t pos, uint32_t n)
{
    /* n (1..32) bits starting at bit `pos`, least significant bit first */
    uint64_t word = 0;
    uint32_t first = pos >> 3, shift = pos & 7u, count = (shift + n + 7u) >> 3, i;
    for (i = 0; i < count; ++i) {
        word |= (uint64_t)bytes[first + i] << (8u * i);
    }
    word >>= shift;
    return (uint32_t)(word & ((n == 32u) ? 0xffffffffu : ((1u << n) - 1u)));
}

void qx_unpack_row(const qx_weight_t *w, int32_t row, int32_t *codes)
{
    const uint8_t *bytes = w->packed + (uint32_t)row * (uint32_t)w->row_bytes;
    uint32_t mask = (1u << w->ebits) - 1u, bits = w->bits, i, t;
    for (i = 0; i < (uint32_t)w->row_len; ++i) {
        uint32_t v = qx_field(bytes, i * bits, bits);
        switch (w->format) {
        case QX_INT_AFFINE: {
            int64_t value = (int64_t)v;
            if (w->is_signed && (v >> (bits - 1u)) != 0u) {
                value -= (int64_t)1 << bits;
            }
            codes[i] = (int32_t)(value - w->zero_point[row]);
            break;
        }
        case QX_CODEBOOK:
            codes[i] = w->levels[(w->shared_levels ? 0 : row * w->n_levels) + (int32_t)v];
            break;
        case QX_POT:
        case QX_POST: {
            int32_t m = (int32_t)(v & mask);
            codes[i] = (v >> w->ebits) ? -m : m;
            break;
        }
        default: /* QX_APOT */
            for (t = 0; t < w->terms; ++t) {
                int32_t m = (int32_t)((v >> (1u + t * w->ebits)) & mask);
                codes[i * w->terms + t] = (v & 1u) ? -m : m;
            }
            break;
        }
    }
}

static qx_acc_t qx_shift_term(qx_acc_t x, int32_t shift, int negative)
{
    /* x * 2**shift, negated when `negative`: a shift of the magnitude */
    qx_acc_t magnitude = (qx_acc_t)((x < 0 ? -x : x) << shift);
    return ((x < 0) != negative) ? -magnitude : magnitude;
}

/* The exact integer product of activation x (zero point removed) and weight element i. */
static qx_acc_t qx_product(const qx_weight_t *w, const int32_t *codes, int32_t i, qx_acc_t x)
{
    int32_t code, t, e;
    qx_acc_t sum;
    switch (w->format) {
    case QX_INT_AFFINE:
    case QX_CODEBOOK:
        return x * (qx_acc_t)codes[i];
    case QX_POT: /* shift */
        code = codes[i];
        return code ? qx_shift_term(x, (code < 0 ? -code : code) - 1, code < 0) : 0;
    case QX_POST: /* even exponent: shift; odd exponent: look-up table */
        code = codes[i];
        if (!code) {
            return 0;
        }
        e = (code < 0 ? -code : code) - 1;
        if (e % 2 == 0) {
            return qx_shift_term(x, w->frac_bits - e / 2, code < 0);
        }
        sum = (qx_acc_t)w->lut[(e / 2) * w->lut_len + (int32_t)(x - w->x_min)];
        return code < 0 ? -sum : sum;
    default: /* QX_APOT: one shift per present term */
        sum = 0;
        for (t = 0; t < w->terms; ++t) {
            code = codes[i * w->terms + t];
            if (code) {
                sum += qx_shift_term(x, (code < 0 ? -code : code) - 1, code < 0);
            }
        }
        return sum;
    }
}

void qx_conv2d(const qx_conv_t *p, const qx_act_t *x, qx_act_t *y, int32_t *codes)
{
    int32_t cin_g = p->in_c / p->groups, cout_g = p->out_c / p->groups;
    int32_t o, i, j, c, u, v;
    int linear = p->weight->format == QX_INT_AFFINE || p->weight->format == QX_CODEBOOK; /* plain multiplies */
    for (o = 0; o < p->out_c; ++o) {
        const qx_act_t *xg = x + (o / cout_g) * cin_g * p->in_h * p->in_w;
        qx_acc_t bias = p->bias ? (qx_acc_t)p->bias[o] : 0;
        qx_unpack_row(p->weight, o, codes);
        for (i = 0; i < p->out_h; ++i) {
            for (j = 0; j < p->out_w; ++j) {
                qx_acc_t acc = 0;
                for (c = 0; c < cin_g; ++c) {
                    for (u = 0; u < p->k_h; ++u) {
                        int32_t ih = i * p->stride_h + u * p->dil_h - p->pad_top;
                        if (ih < 0 || ih >= p->in_h) {
                            continue; /* padding contributes 0 */
                        }
                        for (v = 0; v < p->k_w; ++v) {
                            int32_t iw = j * p->stride_w + v * p->dil_w - p->pad_left;
                            if (iw < 0 || iw >= p->in_w) {
                                continue;
                            }
                            qx_acc_t xv = (qx_acc_t)xg[(c * p->in_h + ih) * p->in_w + iw] - p->x_zp;
                            int32_t k = (c * p->k_h + u) * p->k_w + v;
                            acc += linear ? xv * (qx_acc_t)codes[k] : qx_product(p->weight, codes, k, xv);
                        }
                    }
                }
                y[(o * p->out_h + i) * p->out_w + j] = (qx_act_t)(acc + bias);
            }
        }
    }
}

void qx_linear(const qx_linear_t *p, const qx_act_t *x, qx_act_t *y, int32_t *codes)
{
    int32_t o, k;
    for (o = 0; o < p->out_n; ++o) {
        qx_acc_t acc = 0;
        qx_unpack_row(p->weight, o, codes);
        for (k = 0; k < p->in_n; ++k) {
            acc += qx_product(p->weight, codes, k, (qx_acc_t)x[k] - p->x_zp);
        }
        y[o] = (qx_act_t)(acc + (p->bias ? (qx_acc_t)p->bias[o] : 0));
    }
}

void qx_add(const qx_add_t *p, const qx_act_t *a, const qx_act_t *b, qx_act_t *y)
{
    int32_t i;
    for (i = 0; i < p->n; ++i) {
        y[i] = (qx_act_t)(((int64_t)a[i] - p->zp_a) * p->mul_a + ((int64_t)b[i] - p->zp_b) * p->mul_b);
    }
}

int64_t qx_round_shift(int64_t value, int32_t shift)
{
    /* value * 2**-shift (shift >= 0), round half to even */
    int64_t quotient, remainder, half;
    if (shift <= 0) {
        return value;
    }
    quotient = value >= 0 ? value >> shift : ~((~value) >> shift); /* floor */
    remainder = value - quotient * ((int64_t)1 << shift);
    half = (int64_t)1 << (shift - 1);
    if (remainder > half || (remainder == half && quotient % 2 != 0)) {
        quotient += 1;
    }
    return quotient;
}

int64_t qx_round_div(int64_t value, int64_t divisor)
{
    /* value / divisor (divisor > 0), round half to even */
    int64_t quotient = value / divisor, remainder = value % divisor;
    if (remainder < 0) {
        quotient -= 1;
        remainder += divisor;
    }
    if (2 * remainder > divisor || (2 * remainder == divisor && quotient % 2 != 0)) {
        quotient += 1;
    }
    return quotient;
}

int qx_requantize(const qx_requant_t *p, const qx_act_t *acc, const qx_act_t *num, const qx_act_t *den, qx_act_t *y)
{
    int32_t c, k;
    int64_t factor = (p->mode == QX_DYN_MUL || p->mode == QX_DYN_MULDIV) ? (int64_t)num[0] : 1;
    int use_den = p->mode == QX_DYN_DIV || p->mode == QX_DYN_MULDIV;
    if (use_den && den[0] <= 0) {
        return QX_ERR_DIVISOR;
    }
    for (c = 0; c < p->channels; ++c) {
        int32_t index = p->n_params == 1 ? 0 : c, shift = p->shift[index];
        int64_t multiplier = (int64_t)p->multiplier[index] * factor;
        int64_t left = (int64_t)1 << (shift < 0 ? -shift : 0);
        int64_t divisor = use_den ? (int64_t)den[0] * ((int64_t)1 << (shift > 0 ? shift : 0)) : 1;
        for (k = 0; k < p->inner; ++k) {
            int64_t product = (int64_t)acc[c * p->inner + k] * multiplier * left;
            int64_t q = use_den ? qx_round_div(product, divisor) : qx_round_shift(product, shift);
            q += p->zp_out;
            q = q < p->clip_min ? p->clip_min : (q > p->clip_max ? p->clip_max : q);
            y[c * p->inner + k] = (qx_act_t)q;
        }
    }
    return QX_OK;
}

void qx_relu(int32_t n, int32_t zp, const qx_act_t *x, qx_act_t *y)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        y[i] = x[i] < zp ? zp : x[i];
    }
}

void qx_clip(int32_t n, int32_t lo, int32_t hi, const qx_act_t *x, qx_act_t *y)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
    }
}

void qx_maxpool(const qx_pool_t *p, const qx_act_t *x, qx_act_t *y)
{
    int32_t c, i, j, u, v;
    for (c = 0; c < p->channels; ++c) {
        for (i = 0; i < p->out_h; ++i) {
            for (j = 0; j < p->out_w; ++j) {
                qx_act_t best = p->pad_value; /* the type's minimum: padding never wins */
                for (u = 0; u < p->k_h; ++u) {
                    int32_t ih = i * p->stride_h + u - p->pad_top;
                    for (v = 0; v < p->k_w; ++v) {
                        int32_t iw = j * p->stride_w + v - p->pad_left;
                        if (ih >= 0 && ih < p->in_h && iw >= 0 && iw < p->in_w) {
                            qx_act_t value = x[(c * p->in_h + ih) * p->in_w + iw];
                            best = value > best ? value : best;
                        }
                    }
                }
                y[(c * p->out_h + i) * p->out_w + j] = best;
            }
        }
    }
}

void qx_avgpool(const qx_pool_t *p, const qx_act_t *x, qx_act_t *y)
{
    int32_t c, i, j, u, v;
    for (c = 0; c < p->channels; ++c) {
        for (i = 0; i < p->out_h; ++i) {
            for (j = 0; j < p->out_w; ++j) {
                int64_t total = 0, count = 0;
                for (u = 0; u < p->k_h; ++u) {
                    int32_t ih = i * p->stride_h + u - p->pad_top;
                    for (v = 0; v < p->k_w; ++v) {
                        int32_t iw = j * p->stride_w + v - p->pad_left;
                        if (ih >= 0 && ih < p->in_h && iw >= 0 && iw < p->in_w) {
                            total += (int64_t)x[(c * p->in_h + ih) * p->in_w + iw] - p->zp;
                            count += 1;
                        }
                    }
                }
                if (p->count_include_pad) {
                    count = (int64_t)p->k_h * p->k_w;
                }
                y[(c * p->out_h + i) * p->out_w + j] = (qx_act_t)(qx_round_div(total, count) + p->zp);
            }
        }
    }
}

void qx_global_avgpool(int32_t channels, int32_t hw, int32_t zp, const qx_act_t *x, qx_act_t *y)
{
    int32_t c, k;
    for (c = 0; c < channels; ++c) {
        int64_t total = 0;
        for (k = 0; k < hw; ++k) {
            total += (int64_t)x[c * hw + k] - zp;
        }
        y[c] = (qx_act_t)(qx_round_div(total, hw) + zp);
    }
}

void qx_copy(int32_t n, const qx_act_t *x, qx_act_t *y)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        y[i] = x[i];
    }
}

void qx_concat_part(int32_t outer, int32_t chunk, int32_t out_chunk, int32_t offset, const qx_act_t *x, qx_act_t *y)
{
    int32_t o, k;
    for (o = 0; o < outer; ++o) {
        for (k = 0; k < chunk; ++k) {
            y[o * out_chunk + offset + k] = x[o * chunk + k];
        }
    }
}
