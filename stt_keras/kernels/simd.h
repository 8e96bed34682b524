// SIMD helpers shared by the native STT kernels (windowed_attention.cc and
// nsm_score.cc, compiled together into one library by stt_keras/kernels/build.py).

#ifndef STT_KERAS_KERNELS_SIMD_H_
#define STT_KERAS_KERNELS_SIMD_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace stt_kernels {

constexpr int64_t kLanes = 16;  // floats per vector: scores or points computed per multiply-add run

// GCC/Clang vector extensions: explicit SIMD that compiles to AVX-512/AVX2 on
// x86 and NEON on ARM (Jetson) alike, so the hot loops do not depend on the
// auto-vectoriser's choices (it vectorised the value sum across keys, with
// permutes, and left the max scalar).
using V16 = float __attribute__((vector_size(64)));
using V8 = float __attribute__((vector_size(32)));
using I16 = int32_t __attribute__((vector_size(64)));

// A vector of N floats (vector_size cannot depend on a template parameter).
template <int N>
struct VecOf;
template <>
struct VecOf<8> {
  using type = V8;
};
template <>
struct VecOf<16> {
  using type = V16;
};
template <>
struct VecOf<32> {
  using type = float __attribute__((vector_size(128)));
};

inline V16 Load16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store16(float* p, V16 v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) on 16 lanes, for x <= 0 (softmax arguments after subtracting the max):
// 2^(x log2 e) split into an integer power, built in the exponent bits, and a
// degree-6 polynomial of the fraction. std::exp is a
// scalar libm call and was most of this kernel's time.
inline V16 FastExp16(V16 x) {
  const V16 lo = V16{} - 87.f;
  x = x < lo ? lo : x;
  const V16 t = x * 1.44269504088896341f;
  I16 ti = __builtin_convertvector(t, I16);  // truncates toward zero
  V16 fi = __builtin_convertvector(ti, V16);
  const I16 above = fi > t;                  // t < 0 not integral: floor = trunc - 1
  ti = ti + above;                           // (true lanes are -1)
  fi = __builtin_convertvector(ti, V16);
  const V16 f = t - fi;
  // Least-squares fit of 2^f on [0, 1] in relative error, p(0) = 1: 5e-9 in
  // exact arithmetic; with float32 rounding of x * log2(e), about 1e-6 overall.
  V16 p = V16{} + 2.154066972433887e-4f;
  p = p * f + 1.248284004079594e-3f;
  p = p * f + 9.674549891507241e-3f;
  p = p * f + 5.548532072372258e-2f;
  p = p * f + 2.402294005208627e-1f;
  p = p * f + 6.931470281767104e-1f;
  p = p * f + 1.f;
  const I16 bits = (ti + 127) << 23;
  V16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// One map row of a [w, src_stride] channels-last block, first `channels`
// channels, written transposed to dst [channels, padded_w] (x innermost, the
// padding zeroed). 16 points at a time: their 16 source lines (1-2 KB apart,
// which would thrash a few L1 sets if all w were walked per channel) stay in L1.
inline void TransposeRow(const float* src, int64_t src_stride, int64_t channels, int64_t w, int64_t padded_w,
                         float* dst) {
  for (int64_t x0 = 0; x0 < w; x0 += kLanes) {
    const int64_t xn = std::min<int64_t>(kLanes, w - x0);
    for (int64_t c = 0; c < channels; ++c) {
      float* line = dst + c * padded_w + x0;
      for (int64_t x = 0; x < xn; ++x) line[x] = src[(x0 + x) * src_stride + c];
    }
  }
  for (int64_t c = 0; c < channels; ++c) std::fill(dst + c * padded_w + w, dst + (c + 1) * padded_w, 0.f);
}

}  // namespace stt_kernels

#endif  // STT_KERAS_KERNELS_SIMD_H_
