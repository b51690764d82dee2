/* refresh_math.h -- the refresher's floating point, written once for both
 * backends (C, and CUDA device code).
 *
 * Owns: the exact sequence of IEEE 754 binary64 operations behind rates,
 * priors and smoothed rates (refresh.h lists it), and the order key that
 * ranks values for top-K. Every operation rounds to nearest; none is fused:
 * on the device the _rn intrinsics are never contracted (and the file is
 * built with --fmad=false); a C file that includes this must turn FP
 * contraction off before it (refresh_cpu.c does; ISO C mode, -std=c11,
 * already defaults to off in GCC).
 *
 * May not touch: anything; pure functions.
 */
#ifndef IQP_REFRESH_MATH_H
#define IQP_REFRESH_MATH_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define IQP_RM_FN static inline __host__ __device__
#else
#define IQP_RM_FN static inline
#endif

IQP_RM_FN double iqp_rm_mul(double x, double y) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(x, y);
#else
    return x * y;
#endif
}

IQP_RM_FN double iqp_rm_add(double x, double y) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(x, y);
#else
    return x + y;
#endif
}

IQP_RM_FN double iqp_rm_div(double x, double y) {
#if defined(__CUDA_ARCH__)
    return __ddiv_rn(x, y);
#else
    return x / y;
#endif
}

IQP_RM_FN double iqp_rm_i2d(int64_t v) {
#if defined(__CUDA_ARCH__)
    return __ll2double_rn((long long)v);
#else
    return (double)v;
#endif
}

/* count / context_count; 0 when context_count is 0 (iqp_features_rate). */
IQP_RM_FN double iqp_rm_rate(int64_t count, int64_t context_count) {
    return context_count == 0 ? 0.0 : iqp_rm_div(iqp_rm_i2d(count), iqp_rm_i2d(context_count));
}

/* (count + a * prior) / (context_count + a); 0 when the denominator is 0. */
IQP_RM_FN double iqp_rm_smooth(int64_t count, int64_t context_count, double a, double prior) {
    double t = iqp_rm_mul(a, prior);
    double num = iqp_rm_add(iqp_rm_i2d(count), t);
    double den = iqp_rm_add(iqp_rm_i2d(context_count), a);
    return den == 0.0 ? 0.0 : iqp_rm_div(num, den);
}

/* An unsigned key that orders doubles like <, with -0.0 just below +0.0;
 * never 0 for a non-NaN value (0 marks "not a candidate" in top-K). */
IQP_RM_FN uint64_t iqp_rm_order_key(double v) {
    uint64_t bits;
#if defined(__CUDA_ARCH__)
    bits = (uint64_t)__double_as_longlong(v);
#else
    memcpy(&bits, &v, sizeof bits);
#endif
    return (bits >> 63) ? ~bits : (bits | 0x8000000000000000ull);
}

#endif
