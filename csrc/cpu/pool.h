// diffcore's CPU worker pool: fork-join over independent pieces in which helpers are optional.
//
// Why not an OpenMP parallel region: a region cannot end before every thread of its team has been
// scheduled and has reached the closing barrier. On a machine whose cores other processes hold, a woken
// worker waits for its turn on a core (one or several scheduler time slices, milliseconds), and the
// caller waits with it even when it has done all the work alone: measured 2-50x the one-thread time
// (bench/bench_threads.py). Here the caller claims pieces like any helper, and once every piece is
// claimed it waits only for pieces a helper is computing; a helper that wakes after the job is over
// finds nothing to claim and goes back to sleep. A busy machine therefore costs at most about the
// one-thread time, an idle one gets every core.
//
// Every piece runs the same code whichever thread claims it, so callers whose pieces write disjoint
// outputs (or per-piece partial results reduced in a fixed order) give results independent of the
// thread count and of the schedule.
#pragma once
#include <cstdint>
#include <functional>

namespace dc {

// Runs fn(lo, hi) over [0, total) in claims of at most `grain` indices, on the calling thread and up to
// nthreads - 1 pool helpers; returns when every index has been processed. Serial when nthreads <= 1,
// when one claim covers everything, or when another thread is already running a job (no nesting).
void parallel_pieces(int64_t total, int nthreads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// True in a process forked from the one that loaded diffcore. libgomp's thread pool does not survive
// fork(): a child that opens an OpenMP parallel region after its parent had one hangs, so the code
// that still uses OpenMP teams runs on one thread there (the pool above starts its own threads anew).
bool forked_child();

}  // namespace dc
