// Branch-free base-2 exponential that compilers vectorise.
//
// exp2(x) = 2^n * 2^f with n = round(x) and f = x - n in [-0.5, 0.5]. 2^f is a Taylor polynomial
// (degree 7 for float: relative error < 1e-8; degree 13 for double: < 1e-17), 2^n is built in the
// exponent bits. The rounding uses the 1.5 * 2^mantissa "magic number", so n is read from the bit
// pattern with integer adds and shifts only (no float -> int conversion, which SSE2/AVX2 lack for
// 64-bit lanes).
//
// Domain: x <= lowest exponent flushes to +0; x >= highest clamps (ClampHigh = false leaves that out,
// for callers whose x cannot exceed it); NaN propagates. This header includes no torch headers.
#pragma once

#include <cstdint>

#include "isa.h"

namespace tcestim {
inline namespace TCESTIM_ISA {
namespace detail {

template <typename T>
struct Exp2Constants;

template <>
struct Exp2Constants<float> {
  using Bits = uint32_t;
  static constexpr float kLowest = -127.0f;  // 2^-127 encodes as +0: flushes tiny terms to zero
  static constexpr float kHighest = 127.0f;
  static constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23
  static constexpr Bits kBias = 127;
  static constexpr int kMantissaBits = 23;
};

template <>
struct Exp2Constants<double> {
  using Bits = uint64_t;
  static constexpr double kLowest = -1023.0;
  static constexpr double kHighest = 1023.0;
  static constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr Bits kBias = 1023;
  static constexpr int kMantissaBits = 52;
};

template <typename To, typename From>
inline To bit_copy(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_copy needs equal sizes");
  return __builtin_bit_cast(To, from);  // stays in registers, also for vectors (memcpy may not)
}

// A scalar or a GCC/Clang vector with every lane equal to s.
template <typename V, typename S>
inline V splat(S s) {
  return V{} + s;
}

// 2^f for f in [-0.5, 0.5]: Taylor series of exp(f ln 2), Horner form.
template <typename V>
inline V exp2_fraction(V f, float) {
  constexpr float c1 = 6.931471805599453e-01f, c2 = 2.402265069591007e-01f,
                  c3 = 5.550410866482158e-02f, c4 = 9.618129107628477e-03f,
                  c5 = 1.333355814642844e-03f, c6 = 1.540353039338161e-04f,
                  c7 = 1.525273380405984e-05f;
  return 1.0f + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * c7))))));
}

template <typename V>
inline V exp2_fraction(V f, double) {
  constexpr double c1 = 6.931471805599453094e-01, c2 = 2.402265069591007123e-01,
                   c3 = 5.550410866482157995e-02, c4 = 9.618129107628477161e-03,
                   c5 = 1.333355814642844343e-03, c6 = 1.540353039338160995e-04,
                   c7 = 1.525273380405984089e-05, c8 = 1.321548679014430979e-06,
                   c9 = 1.017808600923969972e-07, c10 = 7.054911620801121e-09,
                   c11 = 4.445538271870811225e-10, c12 = 2.567843599348820525e-11,
                   c13 = 1.369148885390412e-12;
  return 1.0 +
         f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * (c7 + f * (c8 + f * (c9 +
         f * (c10 + f * (c11 + f * (c12 + f * c13))))))))))));
}

}  // namespace detail

// S is float or double; V is S itself or a vector of S (GCC vector extension); B is the matching
// unsigned integer scalar or vector of the same size.
// ClampHigh = false: for x known to be at most C::kHighest (or NaN), the same values without that clamp.
template <typename S, typename V, typename B, bool ClampHigh = true>
inline V fast_exp2(V x) {
  using C = detail::Exp2Constants<S>;
  const V lowest = detail::splat<V>(C::kLowest), highest = detail::splat<V>(C::kHighest);
  const V magic = detail::splat<V>(C::kRoundMagic);
  x = x < lowest ? lowest : x;  // comparisons with NaN are false: NaN passes through
  if constexpr (ClampHigh) x = x > highest ? highest : x;
  const V shifted = x + magic;
  const V rounded = shifted - magic;
  const V fraction = x - rounded;
  // The low mantissa bits of `shifted` hold round(x) in two's complement.
  const B n = detail::bit_copy<B>(shifted) - detail::bit_copy<B>(magic);
  const B bias = detail::splat<B>(static_cast<typename C::Bits>(C::kBias));
  const V scale = detail::bit_copy<V>((n + bias) << C::kMantissaBits);
  return detail::exp2_fraction(fraction, S{}) * scale;
}

template <typename S>
inline S fast_exp2(S x) {
  return fast_exp2<S, S, typename detail::Exp2Constants<S>::Bits>(x);
}

}  // namespace TCESTIM_ISA
}  // namespace tcestim
