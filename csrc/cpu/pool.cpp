// The worker pool of cpu/pool.h. One job at a time: a job is (fn, total, grain) plus a 64-bit state word
// packing the job's epoch (24 bits) and the next unclaimed index (40 bits). A thread claims by CAS on
// that word, so a helper still holding an older epoch can never claim from a newer job; after a
// successful claim the job cannot finish before the claim is reported done, so the job's fields it
// then reads are the right ones.
#include "cpu/pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#ifdef __unix__
#include <unistd.h>
#endif

namespace dc {
namespace {

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

constexpr int kEpochBits = 24;
constexpr int kIndexBits = 64 - kEpochBits;
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
constexpr int kMaxHelpers = 255;  // set_num_threads bounds the request; this bounds the threads we create

int64_t current_pid() {
#ifdef __unix__
  return int64_t(getpid());
#else
  return 0;
#endif
}

class Pool {
 public:
  Pool() : pid_(current_pid()) {}
  int64_t pid() const { return pid_; }
  // false: the pool is busy with another caller's job (the caller then runs serially)
  bool run(int64_t total, int nthreads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    int want = std::min(nthreads - 1, kMaxHelpers);
    {
      std::lock_guard<std::mutex> g(mu_);
      while (threads_ < want) {
        try {
          std::thread(&Pool::helper_main, this, threads_).detach();  // the pool lives for the process
        } catch (const std::system_error&) {  // out of threads: run with those we have
          want = threads_;
          break;
        }
        ++threads_;
      }
      // close the old epoch before touching the job's fields: a helper still holding it cannot claim
      // (its CAS fails), and one that reads the new epoch sees nothing to claim until it is published
      epoch_ = (epoch_ + 1) & ((uint32_t(1) << kEpochBits) - 1);
      state_.store((uint64_t(epoch_) << kIndexBits) | kIndexMask, std::memory_order_seq_cst);
      fn_ = &fn;
      total_.store(total, std::memory_order_relaxed);
      grain_.store(grain, std::memory_order_relaxed);
      done_.store(0, std::memory_order_relaxed);
      wanted_ = want;
      state_.store(uint64_t(epoch_) << kIndexBits, std::memory_order_release);
    }
    work_cv_.notify_all();
    work(uint64_t(epoch_));
    // every index is claimed; wait for the claims helpers are still computing
    for (int spin = 0; done_.load(std::memory_order_acquire) < total; ++spin) {
      if (spin < 4000) {
        relax();
        continue;
      }
      std::unique_lock<std::mutex> g(mu_);
      done_cv_.wait_for(g, std::chrono::milliseconds(1),
                        [&] { return done_.load(std::memory_order_acquire) >= total; });
    }
    std::exception_ptr err;
    {
      std::lock_guard<std::mutex> g(mu_);
      std::swap(err, error_);
    }
    if (err) std::rethrow_exception(err);
    return true;
  }

 private:
  // Claims and runs pieces of job `epoch` until none is left (or a newer job replaced it).
  void work(uint64_t epoch) {
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      if ((s >> kIndexBits) != epoch) return;
      const int64_t lo = int64_t(s & kIndexMask);
      if (lo >= total_.load(std::memory_order_relaxed)) return;
      const int64_t grain = grain_.load(std::memory_order_relaxed);
      if (!state_.compare_exchange_weak(s, s + uint64_t(grain), std::memory_order_acq_rel)) continue;
      // the claim succeeded, so `epoch` is still the published job and its fields are the ones read here
      const int64_t total = total_.load(std::memory_order_relaxed);
      if (lo >= total) return;
      const int64_t hi = std::min(total, lo + grain);
      try {
        (*fn_)(lo, hi);
      } catch (...) {  // reported to the caller (an exception leaving a helper thread would abort)
        std::lock_guard<std::mutex> g(mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_.fetch_add(hi - lo, std::memory_order_acq_rel) + (hi - lo) >= total) {
        std::lock_guard<std::mutex> g(mu_);  // the caller may be about to sleep: no lost wake-up
        done_cv_.notify_all();
      }
    }
  }

  void helper_main(int index) {
    uint32_t seen = 0;
    for (;;) {
      uint32_t epoch;
      {
        std::unique_lock<std::mutex> g(mu_);
        work_cv_.wait(g, [&] { return epoch_ != seen && index < wanted_; });
        seen = epoch = epoch_;
      }
      work(epoch);
    }
  }

  const int64_t pid_;
  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  int threads_ = 0, wanted_ = 0;
  uint32_t epoch_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  std::atomic<int64_t> grain_{1};
  std::exception_ptr error_;  // the first exception a piece threw (guarded by mu_)
  std::atomic<int64_t> total_{0};
  std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<uint64_t> state_{0};
};

// The process's pool. After fork() the child has none of the parent's helper threads (and its mutexes
// may have been copied locked), so a child gets a fresh pool; the parent's is leaked, like the pool
// itself at exit (detached helpers sleep until the process ends).
std::atomic<Pool*> g_pool{nullptr};

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr && p->pid() == current_pid()) return *p;
  Pool* fresh = new Pool();
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread installed one first
  return *p;
}

const int64_t g_load_pid = current_pid();

}  // namespace

bool forked_child() { return current_pid() != g_load_pid; }

void parallel_pieces(int64_t total, int nthreads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (nthreads <= 1 || total <= grain || total > int64_t(kIndexMask >> 1) || !pool().run(total, nthreads, grain, fn))
    fn(0, total);
}

}  // namespace dc
