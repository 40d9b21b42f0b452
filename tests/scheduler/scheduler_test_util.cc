#include "tests/scheduler/scheduler_test_util.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/concurrency.h"
#include "tests/testing/status_matchers.h"

namespace dmoe::scheduler_testing {

std::vector<int32_t> Prompt(int64_t length, int32_t salt) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < length; ++i) {
    p.push_back(static_cast<int32_t>((i * 37 + salt * 101 + 5) % 3900));
  }
  return p;
}

std::vector<Case> GreedyCases(int n) {
  std::vector<Case> cases;
  for (int i = 0; i < n; ++i) {
    engine::GenerationParams p;
    p.mask_id = kMask;
    p.stop_ids = {kStop};
    p.threshold = std::vector<float>{0.0f, 0.5f, 0.9f, 0.95f}[i % 4];
    p.block_length = std::vector<int64_t>{32, 8, 4, 16}[i % 4];
    p.max_new_tokens = 10 + 7 * (i % 5);
    if (i % 5 == 3) p.mode = engine::DecodeMode::kAutoregressive;
    cases.push_back({Prompt(3 + (i * 11) % 40, i), p});
  }
  return cases;
}

std::vector<engine::GenerationResult> SoloRuns(const std::string& model_dir,
                                               const std::vector<Case>& cases) {
  auto engine = engine::Engine::Create({.model_dir = model_dir, .num_threads = 2});
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::vector<engine::GenerationResult> out;
  if (!engine.ok()) return out;
  for (const Case& c : cases) {
    auto r = (*engine)->Generate({{c.prompt, c.params}});
    EXPECT_TRUE(r.ok()) << r.status();
    out.push_back(r.ok() ? (*r)[0] : engine::GenerationResult{});
  }
  return out;
}

ConcurrentRun SubmitConcurrently(scheduler::Scheduler& scheduler, const std::vector<Case>& cases,
                                 absl::Duration timeout) {
  // Shared with the callbacks, which may outlive this call when the wait times out.
  struct State {
    absl::Mutex mu;
    ConcurrentRun run;
    int remaining = 0;
  };
  auto state = std::make_shared<State>();
  state->run.results.assign(cases.size(), absl::UnknownError("not finished"));
  state->run.streamed.resize(cases.size());
  state->remaining = static_cast<int>(cases.size());
  constexpr int kThreads = 4;
  dmoe_testing::RunConcurrently(kThreads, [&](int t) {
    for (size_t i = t; i < cases.size(); i += kThreads) {
      scheduler::SchedulerRequest request{.request_id = absl::StrCat("r", i),
                                          .prompt = cases[i].prompt,
                                          .params = cases[i].params};
      request.callbacks.on_tokens = [state, i](const scheduler::CommittedTokens& t) {
        absl::MutexLock lock(&state->mu);
        std::vector<int32_t>& streamed = state->run.streamed[i];
        streamed.insert(streamed.end(), t.ids.begin(), t.ids.end());
        return scheduler::KeepIds();
      };
      request.callbacks.on_done = [state, i](absl::StatusOr<scheduler::RequestResult> r) {
        absl::MutexLock lock(&state->mu);
        state->run.results[i] = std::move(r);
        --state->remaining;
      };
      EXPECT_THAT(scheduler.Submit(std::move(request)), dmoe_testing::IsOk());
      absl::SleepFor(absl::Milliseconds(1 + (i % 3)));
    }
  });
  absl::MutexLock lock(&state->mu);
  state->run.finished = state->mu.AwaitWithTimeout(
      absl::Condition(+[](int* r) { return *r == 0; }, &state->remaining), timeout);
  return state->run;
}

void ExpectEqualsSolo(const ConcurrentRun& run, const std::vector<engine::GenerationResult>& solo) {
  ASSERT_EQ(run.results.size(), solo.size());
  for (size_t i = 0; i < solo.size(); ++i) {
    ASSERT_THAT(run.results[i], dmoe_testing::IsOk()) << "request " << i;
    EXPECT_EQ(run.results[i]->ids, solo[i].ids) << "request " << i;
    EXPECT_EQ(run.results[i]->forwards, solo[i].forwards) << "request " << i;
    EXPECT_EQ(run.results[i]->finish_reason, solo[i].finish_reason) << "request " << i;
  }
}

}  // namespace dmoe::scheduler_testing
