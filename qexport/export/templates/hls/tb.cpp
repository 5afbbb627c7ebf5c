// C-simulation testbench for a qexport HLS model: tb INPUT OUTPUT
// INPUT: per sample every graph input in order, little-endian int32 (quantized integers, main.c -q layout);
// OUTPUT: per sample every graph output in order, little-endian int32.
#include <cstdio>

#include "model_hls.h"

static bool read_value(std::FILE *f, int32_t &value) {
    unsigned char b[4];
    if (std::fread(b, 1, 4, f) != 4) return false;
    value = int32_t(uint32_t(b[0]) | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24));
    return true;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    std::FILE *in = std::fopen(argv[1], "rb");
    std::FILE *out = in ? std::fopen(argv[2], "wb") : nullptr;
    if (!in || !out) {
        std::fprintf(stderr, "error: cannot open %s\n", in ? argv[2] : argv[1]);
        return 2;
    }
    static ap_int<32> x[QXM_INPUT_ELEMS], y[QXM_OUTPUT_ELEMS];
    int status = 0;
    for (long sample = 0;; ++sample) {
        int k = 0;
        bool complete = true;
        for (int t = 0; t < QXM_NUM_INPUTS && complete; ++t) {
            for (int i = 0; i < qxm_inputs[t].elems; ++i, ++k) {
                int32_t value;
                if (!read_value(in, value)) {
                    complete = false;
                    break;
                }
                if (value < qxm_inputs[t].min || value > qxm_inputs[t].max) {
                    std::fprintf(stderr, "error: sample %ld: input outside its integer type\n", sample);
                    return 1;
                }
                x[k] = value;
            }
        }
        if (!complete) {
            if (k != 0) {
                std::fprintf(stderr, "error: %s ends inside a sample\n", argv[1]);
                status = 1;
            }
            break;
        }
        status = qxm_top(x, y);
        if (status != 0) {
            std::fprintf(stderr, "error: sample %ld: dynamic divisor must be positive\n", sample);
            break;
        }
        for (int i = 0; i < QXM_OUTPUT_ELEMS; ++i) {
            const uint32_t v = uint32_t(int32_t(y[i].to_int()));
            const unsigned char b[4] = {(unsigned char)(v & 0xffu), (unsigned char)((v >> 8) & 0xffu),
                                        (unsigned char)((v >> 16) & 0xffu), (unsigned char)((v >> 24) & 0xffu)};
            std::fwrite(b, 1, 4, out);
        }
    }
    std::fclose(in);
    std::fclose(out);
    return status == 0 ? 0 : 1;
}
