// Runtime instruction-set dispatch for the CPU loops that are worth it (the OT kernels): the same
// always-inline loop body is compiled twice, once for the baseline target and once with AVX2 + FMA,
// and the caller picks the variant once per call from the running CPU. The module itself stays
// portable (no -march flags).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DC_ISA_HAS_AVX2 1
#define DC_TARGET_AVX2 __attribute__((target("avx2,fma")))
namespace dc {
inline bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
}  // namespace dc
#else
#define DC_ISA_HAS_AVX2 0
#define DC_TARGET_AVX2
namespace dc {
inline bool cpu_has_avx2_fma() { return false; }
}  // namespace dc
#endif
