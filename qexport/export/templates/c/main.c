/* Example host program for a qexport C model.
 *
 *   model [-q] INPUT OUTPUT
 *
 * INPUT holds samples one after another; a sample is every graph input in order, QXM_INPUT_ELEMS
 * values in all, little-endian float32 (quantized here by ONNX QuantizeLinear's rule) or, with -q,
 * int32 integers already quantized. OUTPUT receives, per sample, every graph output in order:
 * float32 (DequantizeLinear's rule) or, with -q, int32 integers. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

static int32_t in_q[QXM_INPUT_ELEMS];
static int32_t out_q[QXM_OUTPUT_ELEMS];

static uint32_t get_u32(const unsigned char *b)
{
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

static void put_u32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v & 0xffu);
    b[1] = (unsigned char)((v >> 8) & 0xffu);
    b[2] = (unsigned char)((v >> 16) & 0xffu);
    b[3] = (unsigned char)((v >> 24) & 0xffu);
}

static int32_t quantize(float x, const qx_io_t *io)
{
    /* clip(rint(x / scale) + zero_point), ties to even (the default rounding mode), float32 division */
    float q = rintf(x / io->scale);
    double v = (double)q + io->zero_point;
    if (!(v >= io->min)) {
        return io->min; /* also NaN */
    }
    return v > io->max ? io->max : (int32_t)v;
}

static int read_sample(FILE *f, int integers)
{
    /* one fread of the whole sample, then decoded value by value */
    static unsigned char raw[4 * QXM_INPUT_ELEMS];
    size_t got = fread(raw, 1, sizeof raw, f);
    int32_t t, i, k = 0;
    if (got != sizeof raw) {
        return got == 0 ? 0 : -1;
    }
    for (t = 0; t < QXM_NUM_INPUTS; ++t) {
        for (i = 0; i < qxm_inputs[t].elems; ++i, ++k) {
            const uint32_t bits = get_u32(raw + 4 * k);
            if (integers) {
                in_q[k] = (int32_t)bits;
            } else {
                float x;
                memcpy(&x, &bits, sizeof x);
                in_q[k] = quantize(x, &qxm_inputs[t]);
            }
        }
    }
    return 1;
}

static int write_sample(FILE *f, int integers)
{
    unsigned char b[4];
    int32_t t, i, k = 0;
    for (t = 0; t < QXM_NUM_OUTPUTS; ++t) {
        for (i = 0; i < qxm_outputs[t].elems; ++i, ++k) {
            uint32_t bits;
            if (integers) {
                bits = (uint32_t)out_q[k];
            } else {
                float y = (float)(out_q[k] - qxm_outputs[t].zero_point) * qxm_outputs[t].scale;
                memcpy(&bits, &y, sizeof bits);
            }
            put_u32(b, bits);
            if (fwrite(b, 1, 4, f) != 4) {
                return -1;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    int integers = argc == 4 && strcmp(argv[1], "-q") == 0, status = 0, got;
    long samples = 0;
    FILE *in, *out;
    if (argc != 3 + integers) {
        fprintf(stderr, "usage: %s [-q] INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    in = fopen(argv[1 + integers], "rb");
    if (!in) {
        fprintf(stderr, "error: cannot read %s\n", argv[1 + integers]);
        return 2;
    }
    out = fopen(argv[2 + integers], "wb");
    if (!out) {
        fprintf(stderr, "error: cannot write %s\n", argv[2 + integers]);
        fclose(in);
        return 2;
    }
    while ((got = read_sample(in, integers)) == 1) {
        status = qxm_run(in_q, out_q);
        if (status != QX_OK) {
            fprintf(stderr, "error: sample %ld: %s\n", samples,
                    status == QX_ERR_INPUT_RANGE ? "input outside its integer type" : "dynamic divisor must be positive");
            break;
        }
        if (write_sample(out, integers) != 0) {
            fprintf(stderr, "error: cannot write %s\n", argv[2 + integers]);
            status = -1;
            break;
        }
        ++samples;
    }
    if (got < 0) {
        fprintf(stderr, "error: %s ends inside a sample\n", argv[1 + integers]);
        status = -1;
    }
    fclose(in);
    if (fclose(out) != 0) {
        status = -1;
    }
    return status == QX_OK ? 0 : 1;
}
