// A fixed pool of worker threads for data-parallel loops in the CPU kernels.
#ifndef DMOE_COMMON_THREAD_POOL_H_
#define DMOE_COMMON_THREAD_POOL_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace dmoe {

// Runs `fn(begin, end)` over disjoint chunks of [0, n) on `num_threads` threads (the caller is
// one of them) and returns when all chunks are done. Thread-compatible: one ParallelFor at a
// time per pool (each compute backend owns its pool).
class ThreadPool {
 public:
  // num_threads <= 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Splits [0, n) into at most num_threads() contiguous chunks of at least `min_chunk` items.
  void ParallelFor(int64_t n, int64_t min_chunk,
                   const std::function<void(int64_t begin, int64_t end)>& fn)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void WorkerLoop(int worker_index) ABSL_LOCKS_EXCLUDED(mu_);
  bool JobDone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; }

  int num_threads_;
  std::vector<std::thread> workers_;
  absl::Mutex mu_;
  // The current job.
  const std::function<void(int64_t, int64_t)>* job_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t job_n_ ABSL_GUARDED_BY(mu_) = 0;
  int job_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // bumped per job; workers wait for a change
  int pending_ ABSL_GUARDED_BY(mu_) = 0;          // worker chunks not yet done
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace dmoe

#endif  // DMOE_COMMON_THREAD_POOL_H_
