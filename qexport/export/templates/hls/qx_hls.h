// qexport HLS kernels: one function template per IR op, instantiated per layer by the generated model.cpp.
//
// A layer is a struct L (generated) holding its dimensions as constexpr ints, its tensor types (TX, TY,
// TACC: ap_int / ap_uint of the IR's widths; TACC holds every partial sum) and, for conv2d / linear, a
// static `product(o, k, x)`: the exact integer MAC of its weight format (multiply, shift, shift + LUT,
// shifts + add, codebook look-up). Rounding is round half to even everywhere, as in the IR reference.
#ifndef QX_HLS_H
#define QX_HLS_H

#include <ap_int.h>
#include <stdint.h>

// HLS directives reach the synthesis tool only (__SYNTHESIS__); C simulation compiles without them.
#ifdef __SYNTHESIS__
#define QX_HLS_STR(x) #x
#define QX_HLS(x) _Pragma(QX_HLS_STR(HLS x))
#else
#define QX_HLS(x)
#endif

namespace qx {

typedef ap_int<128> wide_t;  // requantize products: |acc * multiplier * num << left| < 2**62

enum { OK = 0, ERR_DIVISOR = 2 };

inline wide_t round_shift(wide_t value, int shift) {
    // value * 2**-shift (shift >= 0), round half to even; ap_int's >> is a floor
    if (shift <= 0) return value;
    wide_t quotient = value >> shift;
    wide_t remainder = value - (quotient << shift);
    wide_t half = wide_t(1) << (shift - 1);
    if (remainder > half || (remainder == half && quotient[0] == 1)) quotient += 1;
    return quotient;
}

inline wide_t round_div(wide_t value, wide_t divisor) {
    // value / divisor (divisor > 0), round half to even
    wide_t quotient = value / divisor;
    wide_t remainder = value - quotient * divisor;
    if (remainder < 0) {
        quotient -= 1;
        remainder += divisor;
    }
    if (2 * remainder > divisor || (2 * remainder == divisor && quotient[0] == 1)) quotient += 1;
    return quotient;
}

template <class L>
void conv2d(const typename L::TX x[L::IN_C * L::IN_H * L::IN_W], typename L::TY y[L::OUT_C * L::OUT_H * L::OUT_W]) {
    constexpr int CIN_G = L::IN_C / L::GROUPS, COUT_G = L::OUT_C / L::GROUPS;
    for (int o = 0; o < L::OUT_C; ++o) {
        for (int i = 0; i < L::OUT_H; ++i) {
            for (int j = 0; j < L::OUT_W; ++j) {
QX_HLS(PIPELINE II = 1)
                typename L::TACC acc = L::bias(o);
                for (int c = 0; c < CIN_G; ++c) {
                    for (int u = 0; u < L::K_H; ++u) {
                        for (int v = 0; v < L::K_W; ++v) {
                            const int ih = i * L::STRIDE_H + u * L::DIL_H - L::PAD_TOP;
                            const int iw = j * L::STRIDE_W + v * L::DIL_W - L::PAD_LEFT;
                            if (ih >= 0 && ih < L::IN_H && iw >= 0 && iw < L::IN_W) {  // padding adds 0
                                const int channel = (o / COUT_G) * CIN_G + c;
                                typename L::TACC xv = typename L::TACC(x[(channel * L::IN_H + ih) * L::IN_W + iw]) - L::X_ZP;
                                acc += L::product(o, (c * L::K_H + u) * L::K_W + v, xv);
                            }
                        }
                    }
                }
                y[(o * L::OUT_H + i) * L::OUT_W + j] = acc;
            }
        }
    }
}

template <class L>
void linear(const typename L::TX x[L::IN_N], typename L::TY y[L::OUT_N]) {
    for (int o = 0; o < L::OUT_N; ++o) {
QX_HLS(PIPELINE II = 1)
        typename L::TACC acc = L::bias(o);
        for (int k = 0; k < L::IN_N; ++k) {
            acc += L::product(o, k, typename L::TACC(x[k]) - L::X_ZP);
        }
        y[o] = acc;
    }
}

// L: CHANNELS, INNER, N_PARAMS, multiplier[], shift[], ZP_OUT, CLIP_MIN, CLIP_MAX, USE_NUM, USE_DEN
template <class L, class TX, class TY, class TN, class TD>
int requantize(const TX acc[L::CHANNELS * L::INNER], const TN num[1], const TD den[1], TY y[L::CHANNELS * L::INNER]) {
    const wide_t factor = L::USE_NUM ? wide_t(num[0]) : wide_t(1);
    if (L::USE_DEN && den[0] <= 0) return ERR_DIVISOR;
    for (int c = 0; c < L::CHANNELS; ++c) {
        const int index = L::N_PARAMS == 1 ? 0 : c;
        const int shift = L::shift[index];
        const wide_t divisor = L::USE_DEN ? wide_t(den[0]) << (shift > 0 ? shift : 0) : wide_t(1);
        for (int k = 0; k < L::INNER; ++k) {
QX_HLS(PIPELINE II = 1)
            wide_t product = wide_t(acc[c * L::INNER + k]) * wide_t(L::multiplier[index]) * factor;
            product = product << (shift < 0 ? -shift : 0);
            wide_t q = L::USE_DEN ? round_div(product, divisor) : round_shift(product, shift);
            q += L::ZP_OUT;
            if (q < L::CLIP_MIN) q = L::CLIP_MIN;
            if (q > L::CLIP_MAX) q = L::CLIP_MAX;
            y[c * L::INNER + k] = q;
        }
    }
    return OK;
}

template <int N, int ZP_A, int ZP_B, int MUL_A, int MUL_B, class TA, class TB, class TY>
void add(const TA a[N], const TB b[N], TY y[N]) {
    for (int i = 0; i < N; ++i) {
QX_HLS(PIPELINE II = 1)
        y[i] = (ap_int<64>(a[i]) - ZP_A) * MUL_A + (ap_int<64>(b[i]) - ZP_B) * MUL_B;
    }
}

template <int N, int LO, int HI, class T>
void clip(const T x[N], T y[N]) {
    for (int i = 0; i < N; ++i) {
QX_HLS(PIPELINE II = 1)
        y[i] = x[i] < LO ? T(LO) : (x[i] > HI ? T(HI) : x[i]);
    }
}

// L: CHANNELS, IN_H, IN_W, OUT_H, OUT_W, K_H, K_W, STRIDE_H, STRIDE_W, PAD_TOP, PAD_LEFT, COUNT_INCLUDE_PAD, ZP, PAD_VALUE
template <class L, class T>
void maxpool(const T x[L::CHANNELS * L::IN_H * L::IN_W], T y[L::CHANNELS * L::OUT_H * L::OUT_W]) {
    for (int c = 0; c < L::CHANNELS; ++c) {
        for (int i = 0; i < L::OUT_H; ++i) {
            for (int j = 0; j < L::OUT_W; ++j) {
QX_HLS(PIPELINE II = 1)
                T best = L::PAD_VALUE;  // the type's minimum: padding never wins
                for (int u = 0; u < L::K_H; ++u) {
                    for (int v = 0; v < L::K_W; ++v) {
                        const int ih = i * L::STRIDE_H + u - L::PAD_TOP, iw = j * L::STRIDE_W + v - L::PAD_LEFT;
                        if (ih >= 0 && ih < L::IN_H && iw >= 0 && iw < L::IN_W) {
                            const T value = x[(c * L::IN_H + ih) * L::IN_W + iw];
                            if (value > best) best = value;
                        }
                    }
                }
                y[(c * L::OUT_H + i) * L::OUT_W + j] = best;
            }
        }
    }
}

template <class L, class T>
void avgpool(const T x[L::CHANNELS * L::IN_H * L::IN_W], T y[L::CHANNELS * L::OUT_H * L::OUT_W]) {
    for (int c = 0; c < L::CHANNELS; ++c) {
        for (int i = 0; i < L::OUT_H; ++i) {
            for (int j = 0; j < L::OUT_W; ++j) {
QX_HLS(PIPELINE II = 1)
                wide_t total = 0;
                int count = 0;
                for (int u = 0; u < L::K_H; ++u) {
                    for (int v = 0; v < L::K_W; ++v) {
                        const int ih = i * L::STRIDE_H + u - L::PAD_TOP, iw = j * L::STRIDE_W + v - L::PAD_LEFT;
                        if (ih >= 0 && ih < L::IN_H && iw >= 0 && iw < L::IN_W) {
                            total += wide_t(x[(c * L::IN_H + ih) * L::IN_W + iw]) - L::ZP;
                            count += 1;
                        }
                    }
                }
                if (L::COUNT_INCLUDE_PAD) count = L::K_H * L::K_W;
                y[(c * L::OUT_H + i) * L::OUT_W + j] = round_div(total, wide_t(count)) + L::ZP;
            }
        }
    }
}

template <int CHANNELS, int HW, int ZP, class T>
void global_avgpool(const T x[CHANNELS * HW], T y[CHANNELS]) {
    for (int c = 0; c < CHANNELS; ++c) {
        wide_t total = 0;
        for (int k = 0; k < HW; ++k) {
QX_HLS(PIPELINE II = 1)
            total += wide_t(x[c * HW + k]) - ZP;
        }
        y[c] = round_div(total, wide_t(HW)) + ZP;
    }
}

template <int N, class T>
void copy(const T x[N], T y[N]) {
    for (int i = 0; i < N; ++i) {
QX_HLS(PIPELINE II = 1)
        y[i] = x[i];
    }
}

template <int OUTER, int CHUNK, int OUT_CHUNK, int OFFSET, class T>
void concat_part(const T x[OUTER * CHUNK], T y[OUTER * OUT_CHUNK]) {
    for (int o = 0; o < OUTER; ++o) {
        for (int k = 0; k < CHUNK; ++k) {
QX_HLS(PIPELINE II = 1)
            y[o * OUT_CHUNK + OFFSET + k] = x[o * CHUNK + k];
        }
    }
}

}  // namespace qx

#endif
