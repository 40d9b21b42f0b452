#include "common/thread_pool.h"

#include <algorithm>

namespace dmoe {
namespace {
void ChunkBounds(int64_t n, int chunks, int index, int64_t* begin, int64_t* end) {
  int64_t base = n / chunks, extra = n % chunks;
  *begin = index * base + std::min<int64_t>(index, extra);
  *end = *begin + base + (index < extra ? 1 : 0);
}
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads_ = std::max(1, num_threads);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int chunks = static_cast<int>(
      std::min<int64_t>(num_threads_, std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk))));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  {
    absl::MutexLock lock(&mu_);  // unlocking wakes the workers (their Await conditions)
    job_ = &fn;
    job_n_ = n;
    job_chunks_ = chunks;
    pending_ = chunks - 1;
    ++generation_;
  }
  int64_t begin, end;
  ChunkBounds(n, chunks, 0, &begin, &end);
  fn(begin, end);
  absl::MutexLock lock(&mu_, absl::Condition(this, &ThreadPool::JobDone));
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int worker_index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t)>* job;
    int64_t n;
    int chunks;
    {
      auto woken = [this, &seen]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stop_ || generation_ != seen;
      };
      // Shared: an unlock wakes every waiting reader whose condition holds at once, but
      // only one exclusive waiter, so the workers would start one after another.
      absl::ReaderMutexLock lock(&mu_, absl::Condition(&woken));
      if (stop_) return;
      seen = generation_;
      job = job_;
      n = job_n_;
      chunks = job_chunks_;
    }
    if (worker_index < chunks) {
      int64_t begin, end;
      ChunkBounds(n, chunks, worker_index, &begin, &end);
      (*job)(begin, end);
      absl::MutexLock lock(&mu_);
      --pending_;  // the last one makes ParallelFor's JobDone true
    }
  }
}

}  // namespace dmoe
