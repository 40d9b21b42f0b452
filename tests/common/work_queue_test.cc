// WorkQueue: every scheduled task runs exactly once, off the caller's thread, and the
// destructor runs what is still queued before it returns.
#include "common/work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"

namespace dmoe {
namespace {

TEST(WorkQueueTest, RunsEveryTaskOnceOffTheCallersThread) {
  std::atomic<int> ran{0};
  std::atomic<bool> on_caller{false};
  const std::thread::id caller = std::this_thread::get_id();
  {
    WorkQueue queue(2);
    for (int i = 0; i < 1000; ++i) {
      queue.Schedule([&] {
        if (std::this_thread::get_id() == caller) on_caller = true;
        ++ran;
      });
    }
  }  // the destructor drains the queue
  EXPECT_EQ(ran.load(), 1000);
  EXPECT_FALSE(on_caller.load());
}

TEST(WorkQueueTest, DestructorRunsTasksQueuedBehindABlockedOne) {
  absl::Notification release;
  std::atomic<int> ran{0};
  std::thread releaser;
  {
    WorkQueue queue(1);
    queue.Schedule([&] { release.WaitForNotification(); });
    for (int i = 0; i < 5; ++i) queue.Schedule([&] { ++ran; });
    releaser = std::thread([&] { release.Notify(); });
  }
  releaser.join();
  EXPECT_EQ(ran.load(), 5);
}

}  // namespace
}  // namespace dmoe
