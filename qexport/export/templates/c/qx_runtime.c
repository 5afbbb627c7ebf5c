/* qexport C inference runtime (see qx_runtime.h). Integer arithmetic only; well-defined C99:
 * no shift of a negative value, no signed overflow (the exporter proves the accumulator bounds). */
#include "qx_runtime.h"

#include <string.h>

#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define QX_VNNI512 1 /* 16 int32 lanes per vpdpbusd: one block of outputs per register */
#elif defined(__AVXVNNI__)
#include <immintrin.h>
#define QX_VNNI256 1 /* 8 int32 lanes per vpdpbusd (AVX-VNNI): two registers per block */
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

int32_t qx_load(const void *x, int32_t type, int32_t i)
{
    switch (type) {
    case QX_I8:
        return ((const int8_t *)x)[i];
    case QX_U8:
        return ((const uint8_t *)x)[i];
    case QX_I16:
        return ((const int16_t *)x)[i];
    case QX_U16:
        return ((const uint16_t *)x)[i];
    default:
        return ((const int32_t *)x)[i];
    }
}

void qx_store(void *y, int32_t type, int32_t i, int32_t v)
{
    /* v is in the tensor's IR range, which its container holds */
    switch (type) {
    case QX_I8:
        ((int8_t *)y)[i] = (int8_t)v;
        break;
    case QX_U8:
        ((uint8_t *)y)[i] = (uint8_t)v;
        break;
    case QX_I16:
        ((int16_t *)y)[i] = (int16_t)v;
        break;
    case QX_U16:
        ((uint16_t *)y)[i] = (uint16_t)v;
        break;
    default:
        ((int32_t *)y)[i] = v;
        break;
    }
}

/* ------------------------------------------------------------------------------------ dot path */

static int32_t qx_dot_u8s8(const uint8_t *a, const int8_t *b, int32_t n)
{
    /* contiguous uint8 x int8 -> int32: vectorized by compilers (e.g. vpdpbusd, udot, smlad) */
    int32_t sum = 0, k;
    for (k = 0; k < n; ++k) {
        sum += (int32_t)a[k] * (int32_t)b[k];
    }
    return sum;
}

static void qx_dot4_u8s8(const uint8_t *restrict a, const int8_t *restrict w, int32_t n, int32_t *restrict sums)
{
    /* four consecutive weight rows against one activation row: the row is loaded once for all four */
    const int8_t *restrict w1 = w + n, *restrict w2 = w1 + n, *restrict w3 = w2 + n;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, k;
    for (k = 0; k < n; ++k) {
        const int32_t x = a[k];
        s0 += x * (int32_t)w[k];
        s1 += x * (int32_t)w1[k];
        s2 += x * (int32_t)w2[k];
        s3 += x * (int32_t)w3[k];
    }
    sums[0] = s0;
    sums[1] = s1;
    sums[2] = s2;
    sums[3] = s3;
}

static int32_t qx_wbuf_at(const qx_weight_t *w, const qx_dot_t *d, int32_t cout_g, int32_t row)
{
    /* the scratch index of element 0 of a row; element i is at + (i / 4) * 64 + i % 4 when blocked, else + i */
    int32_t g, local, blocks;
    if (!d->blocked) {
        return row * w->row_len;
    }
    g = row / cout_g;
    local = row % cout_g;
    blocks = (cout_g + QX_BLOCK_N - 1) / QX_BLOCK_N;
    return ((g * blocks + local / QX_BLOCK_N) * (d->k_pad / 4)) * 4 * QX_BLOCK_N + (local % QX_BLOCK_N) * 4;
}

static int32_t qx_wbuf_step(const qx_dot_t *d, int32_t i)
{
    return d->blocked ? (i / 4) * 4 * QX_BLOCK_N + i % 4 : i;
}

static const int8_t *qx_dot_weights(const qx_weight_t *w, const qx_dot_t *d, int32_t cout_g, const qx_scratch_t *s)
{
    /* every row as int8 integers: the packed bytes themselves, or unpacked into the scratch (in the blocked
     * layout, whose padding is zero, when d->blocked) */
    int32_t row, i, t;
    if (d->direct) {
        return d->direct;
    }
    if (d->blocked) {
        const int32_t total = w->rows / cout_g * ((cout_g + QX_BLOCK_N - 1) / QX_BLOCK_N) * QX_BLOCK_N * d->k_pad;
        for (i = 0; i < total; ++i) {
            s->wbuf[i] = 0;
        }
    }
    if (w->format == QX_INT_AFFINE && w->bits <= 8) { /* a running bit buffer: one byte read per refill */
        const uint32_t bits = w->bits, mask = (1u << bits) - 1u, sign = w->is_signed ? 1u << (bits - 1u) : 0u;
        for (row = 0; row < w->rows; ++row) {
            const uint8_t *bytes = w->packed + row * w->row_bytes;
            int8_t *dst = s->wbuf + qx_wbuf_at(w, d, cout_g, row);
            const int32_t zero_point = w->zero_point[row];
            uint32_t buffer = 0, have = 0;
            for (i = 0; i < w->row_len; ++i) {
                uint32_t v;
                if (have < bits) {
                    buffer |= (uint32_t)*bytes++ << have;
                    have += 8u;
                }
                v = buffer & mask;
                buffer >>= bits;
                have -= bits;
                dst[qx_wbuf_step(d, i)] = (int8_t)((int32_t)(v ^ sign) - (int32_t)sign - zero_point);
            }
        }
        return s->wbuf;
    }
    for (row = 0; row < w->rows; ++row) {
        int8_t *dst = s->wbuf + qx_wbuf_at(w, d, cout_g, row);
        qx_unpack_row(w, row, s->codes);
        for (i = 0; i < w->row_len; ++i) {
            int32_t value = 0;
            if (w->format == QX_INT_AFFINE || w->format == QX_CODEBOOK) {
                value = s->codes[i];
            } else { /* pot (one term) or apot: each code is the shift + 1, negative for a negative term */
                for (t = 0; t < w->terms; ++t) {
                    int32_t code = s->codes[i * w->terms + t];
                    int32_t term = code ? (int32_t)1 << ((code < 0 ? -code : code) - 1) : 0;
                    value += code < 0 ? -term : term;
                }
            }
            dst[qx_wbuf_step(d, i)] = (int8_t)value;
        }
    }
    return s->wbuf;
}

static uint8_t qx_offset(const uint8_t *x, int32_t i, uint8_t flip, uint8_t base)
{
    /* x[i] - x_min as uint8: int8 storage is flipped to x + 128 first (base = x_min + 128) */
    return (uint8_t)((uint8_t)(x[i] ^ flip) - base);
}

#if defined(__SSE2__)
static int32_t qx_pad4_sse2(const uint8_t *src, int32_t plane, int32_t left, uint8_t flip, uint8_t base, int32_t wp,
                            int32_t w1, uint8_t *out, int32_t pitch)
{
    /* 16 pixels x 4 channels per pass of qx_pad_channels_last: four 16-byte rows (channels c..c+3, pixel wp
     * at src[wp - left] of the first, wp >= left) offset byte-wise as the scalar loop does, interleaved into 4-byte pixels,
     * pixel i stored at out + i * pitch. Returns the first pixel left for the scalar loop. */
    const __m128i vflip = _mm_set1_epi8((char)flip), vbase = _mm_set1_epi8((char)base);
    for (; wp + 16 <= w1; wp += 16) {
        __m128i a[4], pairs[4], quad[4];
        uint32_t lanes[16];
        int32_t k;
        for (k = 0; k < 4; ++k) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)(src + (k * plane + wp - left)));
            a[k] = _mm_sub_epi8(_mm_xor_si128(raw, vflip), vbase);
        }
        pairs[0] = _mm_unpacklo_epi8(a[0], a[1]); /* pixels 0-7: c0 c1 */
        pairs[1] = _mm_unpackhi_epi8(a[0], a[1]); /* pixels 8-15 */
        pairs[2] = _mm_unpacklo_epi8(a[2], a[3]); /* pixels 0-7: c2 c3 */
        pairs[3] = _mm_unpackhi_epi8(a[2], a[3]);
        quad[0] = _mm_unpacklo_epi16(pairs[0], pairs[2]); /* pixels 0-3: c0 c1 c2 c3 */
        quad[1] = _mm_unpackhi_epi16(pairs[0], pairs[2]);
        quad[2] = _mm_unpacklo_epi16(pairs[1], pairs[3]);
        quad[3] = _mm_unpackhi_epi16(pairs[1], pairs[3]);
        for (k = 0; k < 4; ++k) {
            _mm_storeu_si128((__m128i *)(void *)(lanes + 4 * k), quad[k]);
        }
        for (k = 0; k < 16; ++k) {
            memcpy(out + (wp + k) * pitch, &lanes[k], 4);
        }
    }
    if (wp + 8 <= w1) { /* the same for 8 pixels (8-byte rows) */
        __m128i a[4], pairs[2], quad[2];
        uint32_t lanes[8];
        int32_t k;
        for (k = 0; k < 4; ++k) {
            const __m128i raw = _mm_loadl_epi64((const __m128i *)(const void *)(src + (k * plane + wp - left)));
            a[k] = _mm_sub_epi8(_mm_xor_si128(raw, vflip), vbase);
        }
        pairs[0] = _mm_unpacklo_epi8(a[0], a[1]);
        pairs[1] = _mm_unpacklo_epi8(a[2], a[3]);
        quad[0] = _mm_unpacklo_epi16(pairs[0], pairs[1]);
        quad[1] = _mm_unpackhi_epi16(pairs[0], pairs[1]);
        _mm_storeu_si128((__m128i *)(void *)lanes, quad[0]);
        _mm_storeu_si128((__m128i *)(void *)(lanes + 4), quad[1]);
        for (k = 0; k < 8; ++k) {
            memcpy(out + (wp + k) * pitch, &lanes[k], 4);
        }
        wp += 8;
    }
    return wp;
}
#endif

static void qx_pad_channels_last(const qx_conv_t *p, const uint8_t *xg, uint8_t *dst)
{
    /* dst[hp][wp][c] = x[c][hp - pad_top][wp - pad_left] - x_min, or the centred zero outside the input:
     * padding first, then per channel a contiguous read of each input row */
    const int32_t cin_g = p->in_c / p->groups, in_h = p->in_h, in_w = p->in_w, plane = p->in_h * p->in_w;
    const int32_t rows = p->dot.padded_h, cols = p->dot.padded_w, pitch = cols * cin_g, left = p->pad_left;
    const int32_t w0 = p->pad_left < cols ? p->pad_left : cols;
    const int32_t w1 = p->pad_left + in_w < cols ? p->pad_left + in_w : cols;
    const uint8_t flip = p->x_type == QX_I8 ? 0x80u : 0u, pad = (uint8_t)p->dot.x_off;
    const uint8_t base = (uint8_t)(p->x_type == QX_I8 ? p->dot.x_min + 128 : p->dot.x_min);
    int32_t hp, wp, c;
    for (hp = 0; hp < rows; ++hp) {
        const int32_t ih = hp - p->pad_top;
        uint8_t *row = dst + hp * pitch;
        if (ih < 0 || ih >= in_h) {
            for (wp = 0; wp < pitch; ++wp) {
                row[wp] = pad;
            }
            continue;
        }
        for (wp = 0; wp < w0 * cin_g; ++wp) {
            row[wp] = pad;
        }
        for (wp = w1 * cin_g; wp < pitch; ++wp) {
            row[wp] = pad;
        }
        c = 0;
        for (; c + 4 <= cin_g; c += 4) { /* four channels per pass: four contiguous bytes per pixel */
            const uint8_t *restrict s0 = xg + c * plane + ih * in_w, *restrict s1 = s0 + plane;
            const uint8_t *restrict s2 = s1 + plane, *restrict s3 = s2 + plane;
            uint8_t *restrict out = row + c;
            wp = w0;
#if defined(__SSE2__)
            wp = qx_pad4_sse2(s0, plane, left, flip, base, wp, w1, out, cin_g);
#endif
            for (; wp < w1; ++wp) {
                out[wp * cin_g] = (uint8_t)((uint8_t)(s0[wp - left] ^ flip) - base);
                out[wp * cin_g + 1] = (uint8_t)((uint8_t)(s1[wp - left] ^ flip) - base);
                out[wp * cin_g + 2] = (uint8_t)((uint8_t)(s2[wp - left] ^ flip) - base);
                out[wp * cin_g + 3] = (uint8_t)((uint8_t)(s3[wp - left] ^ flip) - base);
            }
        }
        for (; c < cin_g; ++c) {
            const uint8_t *restrict src = xg + c * plane + ih * in_w;
            uint8_t *restrict out = row + c;
            for (wp = w0; wp < w1; ++wp) {
                out[wp * cin_g] = (uint8_t)((uint8_t)(src[wp - left] ^ flip) - base);
            }
        }
    }
}

static void qx_copy_bytes(uint8_t *dst, const uint8_t *src, int32_t n)
{
    int32_t k;
    for (k = 0; k < n; ++k) {
        dst[k] = src[k];
    }
}

static void qx_im2col(const qx_conv_t *p, const uint8_t *padded, int32_t first, int32_t count, uint8_t *cols)
{
    /* per output pixel one row of k_h x k_w x cin_g values: k_h contiguous runs (k_h x k_w if dilated);
     * rows are k_pad bytes apart when blocked, the bytes past K zero */
    const int32_t cin_g = p->in_c / p->groups, k_h = p->k_h, k_w = p->k_w, out_w = p->out_w;
    const int32_t pitch = p->dot.padded_w * cin_g, run = k_w * cin_g, tail = p->dot.blocked ? p->dot.k_pad - k_h * run : 0;
    int32_t q, u, v;
    for (q = 0; q < count; ++q) {
        const int32_t i = (first + q) / out_w, j = (first + q) % out_w;
        for (u = 0; u < k_h; ++u) {
            const uint8_t *src = padded + (i * p->stride_h + u * p->dil_h) * pitch + j * p->stride_w * cin_g;
            if (p->dil_w == 1) {
                qx_copy_bytes(cols, src, run);
            } else {
                for (v = 0; v < k_w; ++v) {
                    qx_copy_bytes(cols + v * cin_g, src + v * p->dil_w * cin_g, cin_g);
                }
            }
            cols += run;
        }
        for (v = 0; v < tail; ++v) {
            *cols++ = 0;
        }
    }
}

/* Where the blocked kernel reads a pixel's K values: k_h x k_w runs of `run` bytes (a multiple of 4),
 * `row_step` / `col_step` bytes apart, from the pixel's first byte. An im2col row is one run of k_pad bytes;
 * a direct conv2d (cin_g a multiple of 4) reads the padded channels-last copy in place. */
typedef struct {
    int32_t k_h, k_w, run, row_step, col_step;
} qx_window_t;

static void qx_block_pixel(const uint8_t *restrict a, const qx_window_t *win, const int8_t *restrict wb,
                           int32_t *restrict acc)
{
    /* the portable reference: acc[n] = sum_k a[k] * w[n][k] over one blocked weight block of QX_BLOCK_N outputs */
    int32_t sum[QX_BLOCK_N], u, v, k, n;
    for (n = 0; n < QX_BLOCK_N; ++n) {
        sum[n] = 0;
    }
    for (u = 0; u < win->k_h; ++u) {
        for (v = 0; v < win->k_w; ++v) {
            const uint8_t *restrict run = a + u * win->row_step + v * win->col_step;
            for (k = 0; k < win->run; k += 4, wb += 4 * QX_BLOCK_N) {
                const int32_t a0 = run[k], a1 = run[k + 1], a2 = run[k + 2], a3 = run[k + 3];
                for (n = 0; n < QX_BLOCK_N; ++n) {
                    sum[n] += a0 * wb[4 * n] + a1 * wb[4 * n + 1] + a2 * wb[4 * n + 2] + a3 * wb[4 * n + 3];
                }
            }
        }
    }
    for (n = 0; n < QX_BLOCK_N; ++n) {
        acc[n] = sum[n];
    }
}

#if defined(QX_VNNI512) || defined(QX_VNNI256)
static int32_t qx_bytes4(const uint8_t *a)
{
    int32_t v;
    memcpy(&v, a, sizeof v); /* four activation bytes as one lane (little-endian, as vpdpbusd reads them) */
    return v;
}
#endif

static void qx_block_tile(const uint8_t *const *pix, const qx_window_t *win, const int8_t *wb, int32_t count,
                          int32_t *acc)
{
    /* acc[q * QX_BLOCK_N + n] for `count` (<= QX_TILE) pixels whose windows start at pix[q]. With VNNI, full
     * tiles keep one accumulator register per pixel (two with 256-bit AVX-VNNI) and load each 64-byte K group
     * of weights once for all of them; vpdpbusd adds four exact u8 x s8 products per lane into int32 without
     * saturation, the same sums in another order (exact: the exporter bounds every partial sum). */
    int32_t q = 0;
#if defined(QX_VNNI512)
    if (count == QX_TILE) {
        __m512i sum[QX_TILE];
        int32_t u, v, k, t;
        for (t = 0; t < QX_TILE; ++t) {
            sum[t] = _mm512_setzero_si512();
        }
        for (u = 0; u < win->k_h; ++u) {
            for (v = 0; v < win->k_w; ++v) {
                const int32_t at = u * win->row_step + v * win->col_step;
                for (k = 0; k < win->run; k += 4, wb += 4 * QX_BLOCK_N) {
                    const __m512i w = _mm512_loadu_si512((const void *)wb);
                    for (t = 0; t < QX_TILE; ++t) {
                        sum[t] = _mm512_dpbusd_epi32(sum[t], _mm512_set1_epi32(qx_bytes4(pix[t] + at + k)), w);
                    }
                }
            }
        }
        for (t = 0; t < QX_TILE; ++t) {
            _mm512_storeu_si512((void *)(acc + t * QX_BLOCK_N), sum[t]);
        }
        return;
    }
#elif defined(QX_VNNI256)
    for (; q + QX_TILE / 2 <= count; q += QX_TILE / 2) {
        const int8_t *w_at = wb;
        __m256i lo[QX_TILE / 2], hi[QX_TILE / 2];
        int32_t u, v, k, t;
        for (t = 0; t < QX_TILE / 2; ++t) {
            lo[t] = _mm256_setzero_si256();
            hi[t] = _mm256_setzero_si256();
        }
        for (u = 0; u < win->k_h; ++u) {
            for (v = 0; v < win->k_w; ++v) {
                const int32_t at = u * win->row_step + v * win->col_step;
                for (k = 0; k < win->run; k += 4, w_at += 4 * QX_BLOCK_N) {
                    const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)w_at);
                    const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(w_at + 32));
                    for (t = 0; t < QX_TILE / 2; ++t) {
                        const __m256i a = _mm256_set1_epi32(qx_bytes4(pix[q + t] + at + k));
                        lo[t] = _mm256_dpbusd_avx_epi32(lo[t], a, w0);
                        hi[t] = _mm256_dpbusd_avx_epi32(hi[t], a, w1);
                    }
                }
            }
        }
        for (t = 0; t < QX_TILE / 2; ++t) {
            _mm256_storeu_si256((__m256i *)(void *)(acc + (q + t) * QX_BLOCK_N), lo[t]);
            _mm256_storeu_si256((__m256i *)(void *)(acc + (q + t) * QX_BLOCK_N + 8), hi[t]);
        }
    }
#endif
    for (; q < count; ++q) {
        qx_block_pixel(pix[q], win, wb, acc + q * QX_BLOCK_N);
    }
}

static void qx_conv2d_blocked(const qx_conv_t *p, const int8_t *weights, int32_t *y, const uint8_t *source,
                              int32_t g, int32_t first, int32_t count)
{
    /* `count` output pixels from `first` against every weight block of group g; `source` is the im2col block
     * (d->im2col) or the padded channels-last copy */
    const qx_dot_t *d = &p->dot;
    const int32_t cout_g = p->out_c / p->groups, blocks = (cout_g + QX_BLOCK_N - 1) / QX_BLOCK_N, k_pad = d->k_pad;
    const int32_t pixels = p->out_h * p->out_w, cin_g = p->in_c / p->groups, pitch = d->padded_w * cin_g;
    qx_window_t win = { 1, 1, k_pad, 0, 0 };
    const uint8_t *pix[QX_TILE];
    int32_t acc[QX_TILE * QX_BLOCK_N], correction[QX_BLOCK_N], b, n, q, t;
    if (!d->im2col) { /* undilated columns: a window row is one run of k_w x cin_g contiguous bytes */
        win.k_h = p->k_h;
        win.k_w = p->dil_w == 1 ? 1 : p->k_w;
        win.run = p->dil_w == 1 ? p->k_w * cin_g : cin_g;
        win.row_step = p->dil_h * pitch;
        win.col_step = p->dil_w * cin_g;
    }
    for (b = 0; b < blocks; ++b) {
        const int8_t *wb = weights + (g * blocks + b) * QX_BLOCK_N * k_pad;
        const int32_t o0 = g * cout_g + b * QX_BLOCK_N;
        const int32_t outs = cout_g - b * QX_BLOCK_N < QX_BLOCK_N ? cout_g - b * QX_BLOCK_N : QX_BLOCK_N;
        for (n = 0; n < outs; ++n) {
            correction[n] = (p->bias ? p->bias[o0 + n] : 0) - d->x_off * d->row_sum[o0 + n];
        }
        for (q = 0; q < count; q += QX_TILE) {
            const int32_t tile = count - q < QX_TILE ? count - q : QX_TILE;
            for (t = 0; t < tile; ++t) {
                const int32_t at = first + q + t, i = at / p->out_w, j = at % p->out_w;
                pix[t] = d->im2col ? source + (q + t) * k_pad : source + i * p->stride_h * pitch + j * p->stride_w * cin_g;
            }
            qx_block_tile(pix, &win, wb, tile, acc);
            for (n = 0; n < outs; ++n) {
                int32_t *out = y + (o0 + n) * pixels + first + q;
                for (t = 0; t < tile; ++t) {
                    out[t] = acc[t * QX_BLOCK_N + n] + correction[n];
                }
            }
        }
    }
}

static void qx_conv2d_dot(const qx_conv_t *p, const void *x, int32_t *y, const qx_scratch_t *s)
{
    const qx_dot_t *d = &p->dot;
    const int32_t cin_g = p->in_c / p->groups, cout_g = p->out_c / p->groups;
    const int8_t *weights = qx_dot_weights(p->weight, d, cout_g, s);
    const int32_t k_len = cin_g * p->k_h * p->k_w, pixels = p->out_h * p->out_w, block = d->block;
    const int32_t x_off = d->x_off;
    const int32_t *bias = p->bias, *row_sum = d->row_sum;
    uint8_t *cols = s->cols;
    int32_t g, first, q, o;
    for (g = 0; g < p->groups; ++g) {
        qx_pad_channels_last(p, (const uint8_t *)x + g * cin_g * p->in_h * p->in_w, s->padded);
        for (first = 0; first < pixels; first += block) {
            const int32_t count = pixels - first < block ? pixels - first : block;
            if (d->blocked && !d->im2col) { /* the padded copy read in place */
                qx_conv2d_blocked(p, weights, y, s->padded, g, first, count);
                continue;
            }
            qx_im2col(p, s->padded, first, count, cols);
            if (d->blocked) {
                qx_conv2d_blocked(p, weights, y, cols, g, first, count);
                continue;
            }
            for (o = g * cout_g; o < (g + 1) * cout_g; o += 4) {
                const int8_t *wr = weights + o * k_len;
                int32_t t, rows = (g + 1) * cout_g - o < 4 ? (g + 1) * cout_g - o : 4, sums[4], correction[4];
                for (t = 0; t < rows; ++t) {
                    correction[t] = (bias ? bias[o + t] : 0) - x_off * row_sum[o + t];
                }
                for (q = 0; q < count; ++q) {
                    if (rows == 4) {
                        qx_dot4_u8s8(cols + q * k_len, wr, k_len, sums);
                    } else {
                        for (t = 0; t < rows; ++t) {
                            sums[t] = qx_dot_u8s8(cols + q * k_len, wr + t * k_len, k_len);
                        }
                    }
                    for (t = 0; t < rows; ++t) {
                        y[(o + t) * pixels + first + q] = sums[t] + correction[t];
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------- general path */

void qx_conv2d(const qx_conv_t *p, const void *x, int32_t *y, const qx_scratch_t *s)
{
    int32_t cin_g = p->in_c / p->groups, cout_g = p->out_c / p->groups;
    int32_t o, i, j, c, u, v;
    int linear = p->weight->format == QX_INT_AFFINE || p->weight->format == QX_CODEBOOK; /* plain multiplies */
    if (p->dot.enabled) {
        qx_conv2d_dot(p, x, y, s);
        return;
    }
    for (o = 0; o < p->out_c; ++o) {
        int32_t base = (o / cout_g) * cin_g * p->in_h * p->in_w;
        qx_acc_t bias = p->bias ? (qx_acc_t)p->bias[o] : 0;
        qx_unpack_row(p->weight, o, s->codes);
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
                            qx_acc_t xv;
                            int32_t k = (c * p->k_h + u) * p->k_w + v;
                            if (iw < 0 || iw >= p->in_w) {
                                continue;
                            }
                            xv = (qx_acc_t)qx_load(x, p->x_type, base + (c * p->in_h + ih) * p->in_w + iw) - p->x_zp;
                            acc += linear ? xv * (qx_acc_t)s->codes[k] : qx_product(p->weight, s->codes, k, xv);
                        }
                    }
                }
                y[(o * p->out_h + i) * p->out_w + j] = (int32_t)(acc + bias);
            }
        }
    }
}

void qx_linear(const qx_linear_t *p, const void *x, int32_t *y, const qx_scratch_t *s)
{
    int32_t o, k;
    if (p->dot.enabled) {
        const qx_dot_t *d = &p->dot;
        const int8_t *weights = qx_dot_weights(p->weight, d, p->out_n, s);
        uint8_t flip = p->x_type == QX_I8 ? 0x80u : 0u;
        uint8_t base = (uint8_t)(p->x_type == QX_I8 ? d->x_min + 128 : d->x_min);
        for (k = 0; k < p->in_n; ++k) {
            s->cols[k] = qx_offset((const uint8_t *)x, k, flip, base);
        }
        for (o = 0; o < p->out_n; ++o) {
            int32_t correction = (p->bias ? p->bias[o] : 0) - d->x_off * d->row_sum[o];
            y[o] = qx_dot_u8s8(s->cols, weights + o * p->in_n, p->in_n) + correction;
        }
        return;
    }
    for (o = 0; o < p->out_n; ++o) {
        qx_acc_t acc = 0;
        qx_unpack_row(p->weight, o, s->codes);
        for (k = 0; k < p->in_n; ++k) {
            acc += qx_product(p->weight, s->codes, k, (qx_acc_t)qx_load(x, p->x_type, k) - p->x_zp);
        }
        y[o] = (int32_t)(acc + (p->bias ? (qx_acc_t)p->bias[o] : 0));
    }
}

void qx_add(const qx_add_t *p, const void *a, const void *b, int32_t *y)
{
    const int32_t n = p->n; /* a local bound: the loops vectorize */
    int32_t i;
    if ((p->a_type == QX_I8 || p->a_type == QX_U8) && (p->b_type == QX_I8 || p->b_type == QX_U8)) {
        /* byte inputs: int8 read as uint8 (x ^ 0x80) - 128, a vectorizable loop */
        const uint8_t *restrict pa = (const uint8_t *)a, *restrict pb = (const uint8_t *)b;
        int32_t *restrict out = y;
        const uint8_t fa = p->a_type == QX_I8 ? 0x80u : 0u, fb = p->b_type == QX_I8 ? 0x80u : 0u;
        const int64_t ca = (int64_t)fa + p->zp_a, cb = (int64_t)fb + p->zp_b, ma = p->mul_a, mb = p->mul_b;
        const int64_t limit = (int64_t)1 << 20;
        if (ca >= -512 && ca <= 512 && cb >= -512 && cb <= 512 && ma >= -limit && ma <= limit && mb >= -limit &&
            mb <= limit) { /* |byte - c| <= 767, |term| <= 767 * 2**20 < 2**30: the sum fits int32 lanes */
            const int32_t ca32 = (int32_t)ca, cb32 = (int32_t)cb, ma32 = (int32_t)ma, mb32 = (int32_t)mb;
            for (i = 0; i < n; ++i) {
                out[i] = ((int32_t)(uint8_t)(pa[i] ^ fa) - ca32) * ma32 + ((int32_t)(uint8_t)(pb[i] ^ fb) - cb32) * mb32;
            }
            return;
        }
        for (i = 0; i < n; ++i) {
            out[i] = (int32_t)(((int64_t)(uint8_t)(pa[i] ^ fa) - ca) * ma + ((int64_t)(uint8_t)(pb[i] ^ fb) - cb) * mb);
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        int64_t lhs = ((int64_t)qx_load(a, p->a_type, i) - p->zp_a) * p->mul_a;
        y[i] = (int32_t)(lhs + ((int64_t)qx_load(b, p->b_type, i) - p->zp_b) * p->mul_b);
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

static int qx_requantize_fast(const qx_requant_t *p, const int32_t *acc, void *y)
{
    /* static requantize of int32 accumulators with -31 <= shift <= 61: vectorizable, no branches per element.
     * With u = acc * multiplier * 2**max(-shift, 0) + 2**62 (in [0, 2**63) as the product stays below 2**62),
     * floor(product / 2**shift) for shift > 0 is (u >> shift) - 2**(62 - shift), with the parity of u >> shift;
     * adding half - 1 + that parity bit before the floor rounds half to even. shift <= 0: u - 2**62. */
    int32_t c, k;
    for (c = 0; c < p->channels; ++c) {
        const int32_t index = p->n_params == 1 ? 0 : c, shift = p->shift[index];
        const int32_t right = shift > 0 ? shift : 0; /* shift <= 0: an exact product, no rounding */
        const int64_t multiplier = (int64_t)p->multiplier[index] * ((int64_t)1 << (shift < 0 ? -shift : 0));
        const int64_t offset = (int64_t)1 << (62 - right);
        const uint64_t half = shift > 0 ? ((uint64_t)1 << (right - 1)) - 1u : 0u, bias = (uint64_t)1 << 62;
        const int32_t *restrict a = acc + c * p->inner;
        const int32_t zp = p->zp_out, inner = p->inner;
        const int64_t lo = p->clip_min, hi = p->clip_max;
        const int pure_shift = multiplier == 1 && right >= 1 && right <= 31;
        const uint32_t half32 = pure_shift ? ((uint32_t)1 << (right - 1)) : 0u, mask32 = half32 * 2u - 1u;
        const int32_t offset32 = pure_shift ? (int32_t)((uint32_t)1 << (31 - right)) : 0;
#define QX_REQUANT_LOOP(T)                                                                          \
    {                                                                                               \
        T *restrict out = (T *)y + c * inner;                                                       \
        if (pure_shift) { /* 32-bit lanes: u = acc + 2**31, floor = (u >> shift) - 2**(31 - shift) */  \
            for (k = 0; k < inner; ++k) {                                                           \
                const uint32_t u = (uint32_t)a[k] ^ 0x80000000u, r = u & mask32;                    \
                int32_t q = (int32_t)(u >> right) - offset32;                                       \
                q += (r > half32 || (r == half32 && (q & 1))) ? 1 : 0;                              \
                q += zp;                                                                            \
                q = q < lo ? (int32_t)lo : q;                                                       \
                q = q > hi ? (int32_t)hi : q;                                                       \
                out[k] = (T)q;                                                                      \
            }                                                                                       \
        } else {                                                                                    \
            for (k = 0; k < inner; ++k) {                                                           \
                const uint64_t u = (uint64_t)((int64_t)a[k] * multiplier) + bias;                   \
                int64_t q = (int64_t)((u + half + ((u >> right) & (uint64_t)(shift > 0))) >> right); \
                q = q - offset + zp;                                                                \
                q = q < lo ? lo : q;                                                                \
                q = q > hi ? hi : q;                                                                \
                out[k] = (T)q;                                                                      \
            }                                                                                       \
        }                                                                                           \
    }
        switch (p->y_type) {
        case QX_I8:
            QX_REQUANT_LOOP(int8_t)
            break;
        case QX_U8:
            QX_REQUANT_LOOP(uint8_t)
            break;
        case QX_I16:
            QX_REQUANT_LOOP(int16_t)
            break;
        case QX_U16:
            QX_REQUANT_LOOP(uint16_t)
            break;
        default:
            QX_REQUANT_LOOP(int32_t)
            break;
        }
#undef QX_REQUANT_LOOP
    }
    return QX_OK;
}

static int qx_fast_requant_ok(const qx_requant_t *p)
{
    int32_t i;
    if (p->mode != QX_STATIC || p->acc_type != QX_I32) {
        return 0;
    }
    for (i = 0; i < p->n_params; ++i) {
        int64_t magnitude = p->multiplier[i] < 0 ? -(int64_t)p->multiplier[i] : p->multiplier[i];
        if (p->shift[i] > 61 || p->shift[i] < -31 || (p->shift[i] < 0 && (magnitude << -p->shift[i]) > INT32_MAX)) {
            return 0; /* |acc * multiplier * 2**-shift| < 2**62 is what the fast path needs */
        }
    }
    return 1;
}

int qx_requantize(const qx_requant_t *p, const void *acc, const void *num, const void *den, void *y)
{
    int32_t c, k;
    int64_t factor = (p->mode == QX_DYN_MUL || p->mode == QX_DYN_MULDIV) ? (int64_t)qx_load(num, p->num_type, 0) : 1;
    int use_den = p->mode == QX_DYN_DIV || p->mode == QX_DYN_MULDIV;
    int64_t den0 = use_den ? (int64_t)qx_load(den, p->den_type, 0) : 1;
    if (use_den && den0 <= 0) {
        return QX_ERR_DIVISOR;
    }
    if (qx_fast_requant_ok(p)) {
        return qx_requantize_fast(p, (const int32_t *)acc, y);
    }
    for (c = 0; c < p->channels; ++c) {
        int32_t index = p->n_params == 1 ? 0 : c, shift = p->shift[index];
        int64_t multiplier = (int64_t)p->multiplier[index] * factor;
        int64_t left = (int64_t)1 << (shift < 0 ? -shift : 0);
        int64_t divisor = use_den ? den0 * ((int64_t)1 << (shift > 0 ? shift : 0)) : 1;
        for (k = 0; k < p->inner; ++k) {
            int64_t product = (int64_t)qx_load(acc, p->acc_type, c * p->inner + k) * multiplier * left;
            int64_t q = use_den ? qx_round_div(product, divisor) : qx_round_shift(product, shift);
            q += p->zp_out;
            q = q < p->clip_min ? p->clip_min : (q > p->clip_max ? p->clip_max : q);
            qx_store(y, p->y_type, c * p->inner + k, (int32_t)q);
        }
    }
    return QX_OK;
}

void qx_relu(int32_t n, int32_t zp, int32_t type, const void *x, void *y)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        int32_t v = qx_load(x, type, i);
        qx_store(y, type, i, v < zp ? zp : v);
    }
}

void qx_clip(int32_t n, int32_t lo, int32_t hi, int32_t x_type, int32_t y_type, const void *x, void *y)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        int32_t v = qx_load(x, x_type, i);
        qx_store(y, y_type, i, v < lo ? lo : (v > hi ? hi : v));
    }
}

static void qx_maxpool_bytes(const qx_pool_t *p, const uint8_t *x, uint8_t *y)
{
    /* one-byte containers of one type: x ^ flip orders int8 as uint8, so the maximum is taken on bytes */
    const uint8_t flip = p->x_type == QX_I8 ? 0x80u : 0u;
    const int32_t in_h = p->in_h, in_w = p->in_w, out_h = p->out_h, out_w = p->out_w;
    int32_t c, i, j, u, v;
    if (p->k_h == 2 && p->k_w == 2 && p->pad_top == 0 && p->pad_left == 0 && (out_h - 1) * p->stride_h + 2 <= in_h &&
        (out_w - 1) * p->stride_w + 2 <= in_w) { /* 2 x 2 windows inside the input: no bounds per output */
        const int32_t sh = p->stride_h, sw = p->stride_w;
        for (c = 0; c < p->channels; ++c) {
            const uint8_t *plane = x + c * in_h * in_w;
            uint8_t *out = y + c * out_h * out_w;
            for (i = 0; i < out_h; ++i) {
                const uint8_t *top = plane + i * sh * in_w, *bottom = top + in_w;
                for (j = 0; j < out_w; ++j) {
                    const uint8_t a = (uint8_t)(top[j * sw] ^ flip), b = (uint8_t)(top[j * sw + 1] ^ flip);
                    const uint8_t e = (uint8_t)(bottom[j * sw] ^ flip), f = (uint8_t)(bottom[j * sw + 1] ^ flip);
                    const uint8_t ab = a > b ? a : b, ef = e > f ? e : f;
                    out[i * out_w + j] = (uint8_t)((ab > ef ? ab : ef) ^ flip);
                }
            }
        }
        return;
    }
    for (c = 0; c < p->channels; ++c) {
        const uint8_t *plane = x + c * in_h * in_w;
        for (i = 0; i < out_h; ++i) {
            const int32_t ih0 = i * p->stride_h - p->pad_top;
            const int32_t u0 = ih0 < 0 ? -ih0 : 0, u1 = ih0 + p->k_h > in_h ? in_h - ih0 : p->k_h;
            for (j = 0; j < out_w; ++j) {
                const int32_t iw0 = j * p->stride_w - p->pad_left;
                const int32_t v0 = iw0 < 0 ? -iw0 : 0, v1 = iw0 + p->k_w > in_w ? in_w - iw0 : p->k_w;
                uint8_t best = (uint8_t)((uint8_t)p->pad_value ^ flip); /* the type's minimum: padding never wins */
                for (u = u0; u < u1; ++u) {
                    for (v = v0; v < v1; ++v) {
                        const uint8_t value = (uint8_t)(plane[(ih0 + u) * in_w + iw0 + v] ^ flip);
                        best = value > best ? value : best;
                    }
                }
                y[(c * out_h + i) * out_w + j] = (uint8_t)(best ^ flip);
            }
        }
    }
}

void qx_maxpool(const qx_pool_t *p, const void *x, void *y)
{
    int32_t c, i, j, u, v;
    if ((p->x_type == QX_I8 || p->x_type == QX_U8) && p->y_type == p->x_type) {
        qx_maxpool_bytes(p, (const uint8_t *)x, (uint8_t *)y);
        return;
    }
    for (c = 0; c < p->channels; ++c) {
        for (i = 0; i < p->out_h; ++i) {
            for (j = 0; j < p->out_w; ++j) {
                int32_t best = p->pad_value; /* the type's minimum: padding never wins */
                for (u = 0; u < p->k_h; ++u) {
                    int32_t ih = i * p->stride_h + u - p->pad_top;
                    for (v = 0; v < p->k_w; ++v) {
                        int32_t iw = j * p->stride_w + v - p->pad_left;
                        if (ih >= 0 && ih < p->in_h && iw >= 0 && iw < p->in_w) {
                            int32_t value = qx_load(x, p->x_type, (c * p->in_h + ih) * p->in_w + iw);
                            best = value > best ? value : best;
                        }
                    }
                }
                qx_store(y, p->y_type, (c * p->out_h + i) * p->out_w + j, best);
            }
        }
    }
}

void qx_avgpool(const qx_pool_t *p, const void *x, void *y)
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
                            total += (int64_t)qx_load(x, p->x_type, (c * p->in_h + ih) * p->in_w + iw) - p->zp;
                            count += 1;
                        }
                    }
                }
                if (p->count_include_pad) {
                    count = (int64_t)p->k_h * p->k_w;
                }
                qx_store(y, p->y_type, (c * p->out_h + i) * p->out_w + j, (int32_t)(qx_round_div(total, count) + p->zp));
            }
        }
    }
}

void qx_global_avgpool(int32_t channels, int32_t hw, int32_t zp, int32_t x_type, int32_t y_type, const void *x,
                       void *y)
{
    int32_t c, k;
    for (c = 0; c < channels; ++c) {
        int64_t total = 0;
        for (k = 0; k < hw; ++k) {
            total += (int64_t)qx_load(x, x_type, c * hw + k) - zp;
        }
        qx_store(y, y_type, c, (int32_t)(qx_round_div(total, hw) + zp));
    }
}

void qx_copy(int32_t n, int32_t x_type, int32_t y_type, const void *x, void *y)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        qx_store(y, y_type, i, qx_load(x, x_type, i));
    }
}

void qx_concat_part(int32_t outer, int32_t chunk, int32_t out_chunk, int32_t offset, int32_t x_type, int32_t y_type,
                    const void *x, void *y)
{
    int32_t o, k;
    for (o = 0; o < outer; ++o) {
        for (k = 0; k < chunk; ++k) {
            qx_store(y, y_type, o * out_chunk + offset + k, qx_load(x, x_type, o * chunk + k));
        }
    }
}
