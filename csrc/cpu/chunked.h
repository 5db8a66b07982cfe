// The CPU loop shared by the fused kernels: a [B, N] array is cut into (sample, chunk) pieces of at
// most `chunk` features, run in parallel when the array is large enough to pay for the threads,
// serially otherwise.
//
// Thread policy for a shared machine: the pieces run on diffcore's pool (cpu/pool.h), where a thread
// that gets its core late finds the work done by the others instead of holding the caller at a
// closing barrier, and each kernel's `parallel_threshold` is set where one thread's work is a few
// hundred microseconds or more, so that small calls never wake a helper. Every piece is computed the same way
// whichever thread runs it, so results do not depend on the thread count (tests/test_threads.py).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/pool.h"

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
  if (nthreads > 1 && B * N >= parallel_threshold && total > 1) {
    // a claim is about an eighth of the smallest parallel call: even that one is shared 8 ways, and
    // the claims (one atomic each) stay tens of microseconds of work
    const int64_t grain = std::max<int64_t>(1, parallel_threshold / (8 * chunk));
    parallel_pieces(total, nthreads, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) run(c);
    });
    return;
  }
  for (int64_t c = 0; c < total; ++c) run(c);
}

}  // namespace dc
