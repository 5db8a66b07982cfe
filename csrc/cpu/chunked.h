// The CPU loop shared by the fused kernels: a [B, N] array is cut into (sample, chunk) pieces of at
// most `chunk` features, run in parallel with OpenMP when the array is large enough to pay for the
// threads, serially otherwise.
#pragma once
#include <algorithm>
#include <cstdint>

namespace dc {

template <class Fn>  // fn(b, n0, len)
void for_each_chunk(int64_t B, int64_t N, int64_t chunk, int nthreads, int64_t parallel_threshold, Fn fn) {
  const int64_t per_row = (N + chunk - 1) / chunk;
  const int64_t total = B * per_row;
  auto run = [&](int64_t c) {
    const int64_t b = c / per_row;
    const int64_t n0 = (c % per_row) * chunk;
    fn(b, n0, std::min(chunk, N - n0));
  };
#ifdef DIFFCORE_WITH_OPENMP
  if (nthreads > 1 && B * N >= parallel_threshold && total > 1) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c = 0; c < total; ++c) run(c);
    return;
  }
#else
  (void)nthreads;
  (void)parallel_threshold;
#endif
  for (int64_t c = 0; c < total; ++c) run(c);
}

}  // namespace dc
