// Scalar types and conversions shared by the CPU loops and the CUDA kernels.
// Half types are stored as raw 16-bit words and computed in float (docs/design.md, "One fused kernel
// family"); conversions are bit-exact round-to-nearest-even so CPU and CUDA agree bit for bit.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DC_HD __host__ __device__ __forceinline__
#else
#define DC_HD inline
#endif

namespace dc {

enum class DType : int { F16 = 0, BF16 = 1, F32 = 2, F64 = 3, I64 = 4, Bool = 5, Other = 99 };  // Bool: 1 byte, 0/1

struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

DC_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}
DC_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
DC_HD uint64_t dbl_bits(double d) {
#if defined(__CUDA_ARCH__)
  return uint64_t(__double_as_longlong(d));
#else
  uint64_t u; std::memcpy(&u, &d, 8); return u;
#endif
}
DC_HD double bits_dbl(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double((long long)u);
#else
  double d; std::memcpy(&d, &u, 8); return d;
#endif
}

DC_HD float bf16_to_float(bf16_t h) { return bits_to_float(uint32_t(h.bits) << 16); }
DC_HD bf16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{uint16_t(u >> 16)};
}

DC_HD float half_to_float(half_t h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

DC_HD half_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half_t{uint16_t(sign | 0x7e00u)};   // NaN
  if (a >= 0x477ff000u) return half_t{uint16_t(sign | 0x7c00u)};  // overflow (>= 65520) -> inf
  if (a < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // shift the 24-bit significand so that one unit is 2^-24, rounding to nearest even
    if (a < 0x33000000u) return half_t{uint16_t(sign)};  // < 2^-25 rounds to zero
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // 2^(e-127) * m/2^23 / 2^-24 = m >> (126 - e)
    uint32_t res = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (res & 1u))) ++res;
    return half_t{uint16_t(sign | res)};
  }
  uint32_t res = ((a >> 13) - (112u << 10));
  uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (res & 1u))) ++res;  // may carry into the exponent: correct
  return half_t{uint16_t(sign | res)};
}

template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

template <class C> DC_HD C load_as(const float* p) { return C(*p); }
template <class C> DC_HD C load_as(const double* p) { return C(*p); }
template <class C> DC_HD C load_as(const half_t* p) { return C(half_to_float(*p)); }
template <class C> DC_HD C load_as(const bf16_t* p) { return C(bf16_to_float(*p)); }

template <class C> DC_HD void store_from(float* p, C v) { *p = float(v); }
template <class C> DC_HD void store_from(double* p, C v) { *p = double(v); }
template <class C> DC_HD void store_from(half_t* p, C v) { *p = float_to_half(float(v)); }
template <class C> DC_HD void store_from(bf16_t* p, C v) { *p = float_to_bf16(float(v)); }

// Calls fn(T{}) with T the element type of a floating dtype (host code: the CPU loops and the CUDA
// launchers); other dtypes are rejected by the bindings before any kernel is reached.
template <class Fn>
inline void dispatch_float(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F16: fn(half_t{}); break;
    case DType::BF16: fn(bf16_t{}); break;
    case DType::F32: fn(float{}); break;
    case DType::F64: fn(double{}); break;
    default: break;
  }
}

}  // namespace dc
