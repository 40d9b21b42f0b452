// Helpers shared by the scheduler exactness tests (tests/scheduler over the CPU step executor,
// tests/cuda over the GPU one): request cases, solo engine runs to compare with, and requests
// submitted from several threads into a running scheduler.
#ifndef DMOE_TESTS_SCHEDULER_SCHEDULER_TEST_UTIL_H_
#define DMOE_TESTS_SCHEDULER_SCHEDULER_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "scheduler/scheduler.h"

namespace dmoe::scheduler_testing {

// Mask / stop ids of the cases (inside the tiny vocab of 4096).
inline constexpr int32_t kMask = 4000;
inline constexpr int32_t kStop = 4001;

struct Case {
  std::vector<int32_t> prompt;
  engine::GenerationParams params;
};

// Deterministic prompt of `length` ids below 3900.
std::vector<int32_t> Prompt(int64_t length, int32_t salt);

// `n` greedy cases: thresholds 0 / 0.5 / 0.9 / 0.95, block lengths 32 / 8 / 4 / 16, 10 to 38
// new tokens, every fifth autoregressive, prompts of 3 to 42 ids.
std::vector<Case> GreedyCases(int n);

// Each case alone through one engine::Engine on `model_dir`: what a batched run must equal.
std::vector<engine::GenerationResult> SoloRuns(const std::string& model_dir,
                                               const std::vector<Case>& cases);

// What the callbacks of every case saw, by case index.
struct ConcurrentRun {
  std::vector<absl::StatusOr<scheduler::RequestResult>> results;
  std::vector<std::vector<int32_t>> streamed;  // on_tokens ids, concatenated
  bool finished = false;                       // every on_done ran within the timeout
};

// Submits the cases from four threads (case i from thread i % 4, 1-3 ms apart, so requests
// join a batch that is already running) and waits up to `timeout` for every on_done. Safe
// when the wait times out: the callbacks own what they write to.
ConcurrentRun SubmitConcurrently(scheduler::Scheduler& scheduler, const std::vector<Case>& cases,
                                 absl::Duration timeout);

// Every result is OK and equals its solo run: ids, forwards and finish reason.
void ExpectEqualsSolo(const ConcurrentRun& run, const std::vector<engine::GenerationResult>& solo);

}  // namespace dmoe::scheduler_testing

#endif  // DMOE_TESTS_SCHEDULER_SCHEDULER_TEST_UTIL_H_
