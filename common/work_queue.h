// A fixed set of threads running queued tasks in order of arrival: work that must not run on a
// gRPC reactor thread (tokenizing a prompt) without a thread per call.
#ifndef DMOE_COMMON_WORK_QUEUE_H_
#define DMOE_COMMON_WORK_QUEUE_H_

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace dmoe {

// Thread-safe. The destructor runs every task still queued, then joins the threads.
class WorkQueue {
 public:
  explicit WorkQueue(int num_threads);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Schedule(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace dmoe

#endif  // DMOE_COMMON_WORK_QUEUE_H_
