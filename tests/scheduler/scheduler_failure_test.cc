// The scheduler's failure branches against a scripted StepExecutor (no model): a step whose
// executor lost caches (ABORTED) re-prefills the batch from the committed tokens and retries;
// past max_step_retries the batch fails; the last replica vanishing mid-step (UNAVAILABLE with
// no capacity left) holds the batch until one serves again; holding past unavailable_grace
// fails the requests; any other error fails the batch. Where requests survive, their ids equal
// a fault-free run's.
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/scheduler.h"
#include "scheduler/step_executor.h"

namespace dmoe::scheduler {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kMask = 90;

// A deterministic stand-in for the model: position p proposes token 10 + (p * 7) % 50 with a
// confidence that commits every third position at once and the rest one by one. It keeps each
// sequence's cached length and refuses a plan that does not continue it, as a replica would.
class FakeStepExecutor final : public StepExecutor {
 public:
  // kLoseFirstSequence: one of two replicas died — the step ran, but the first sequence's
  // cache is gone; the others' proposals stand (TakePartialStep says so).
  enum class Fault { kNone, kAborted, kUnavailableNoCapacity, kInternal, kLoseFirstSequence };

  // The next Execute calls fail with these faults, in order.
  std::deque<Fault> script;
  int64_t capacity = 1000;
  int execute_calls = 0;
  int reset_plans = 0;  // plans sent with reset_cache

  absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<SequenceStep>& steps) override {
    ++execute_calls;
    for (const SequenceStep& s : steps) reset_plans += s.reset_cache ? 1 : 0;
    if (!script.empty()) {
      const Fault fault = script.front();
      script.pop_front();
      switch (fault) {
        case Fault::kNone:
          break;
        case Fault::kAborted:
          cached_.clear();
          return absl::AbortedError("fake replica restarted");
        case Fault::kUnavailableNoCapacity:
          cached_.clear();
          capacity = 0;
          return absl::UnavailableError("fake replica went away");
        case Fault::kInternal:
          return absl::InternalError("fake forward failed");
        case Fault::kLoseFirstSequence: {
          absl::StatusOr<std::vector<engine::Proposal>> ran = Run(steps);
          if (!ran.ok()) return ran;
          PartialStep partial;
          partial.fate.assign(steps.size(), StepFate::kDone);
          partial.fate[0] = StepFate::kCacheLost;
          partial.proposals = *std::move(ran);
          cached_.erase(steps[0].sequence_id);
          partial_ = std::move(partial);
          return absl::AbortedError("fake replica of the first sequence died");
        }
      }
    }
    return Run(steps);
  }
  std::optional<PartialStep> TakePartialStep() override {
    return std::exchange(partial_, std::nullopt);
  }
  void Release(const std::vector<std::string>& ids) override {
    for (const std::string& id : ids) cached_.erase(id);
  }
  int64_t KvPagesCapacity() override { return capacity; }

 private:
  absl::StatusOr<std::vector<engine::Proposal>> Run(const std::vector<SequenceStep>& steps) {
    std::vector<engine::Proposal> proposals;
    for (const SequenceStep& s : steps) {
      int64_t& cached = cached_[s.sequence_id];
      if (s.reset_cache) cached = 0;
      if (s.plan.start != cached) {
        return absl::FailedPreconditionError(absl::StrCat(
            s.sequence_id, ": plan starts at ", s.plan.start, ", cache holds ", cached));
      }
      cached = s.plan.start + s.plan.persist;
      engine::Proposal p;
      for (size_t i = s.plan.logits_from; i < s.plan.tokens.size(); ++i) {
        const int64_t position = s.plan.start + static_cast<int64_t>(i);
        p.tokens.push_back(static_cast<int32_t>(10 + (position * 7) % 50));
        p.confidence.push_back(position % 3 == 0 ? 0.99f : 0.5f + 0.01f * (position % 7));
      }
      proposals.push_back(std::move(p));
    }
    return proposals;
  }

  std::map<std::string, int64_t> cached_;
  std::optional<PartialStep> partial_;
};

using Fault = FakeStepExecutor::Fault;

model::ModelConfig Config() {
  model::ModelConfig config;
  config.vocab_size = 100;
  config.max_position_embeddings = 1024;
  return config;
}

engine::GenerationParams Params() {
  engine::GenerationParams p;
  p.block_length = 8;
  p.steps = 8;
  p.max_new_tokens = 24;
  p.mask_id = kMask;
  return p;
}

struct TwoRequests {
  std::vector<absl::StatusOr<RequestResult>> results;
  int steps = 0;
};

// Runs two requests to the end (or until `max_steps`), advancing the fake clock by
// `step_time` per step and restoring capacity after `restore_after` stalled steps.
TwoRequests RunTwo(FakeStepExecutor& executor, SchedulerOptions options, int restore_after = 1,
           absl::Duration step_time = absl::Seconds(1), int max_steps = 200) {
  absl::Time now = absl::UnixEpoch();
  options.start_step_thread = false;
  options.kv_page_tokens = 8;
  options.clock = [&now] { return now; };
  auto scheduler = Scheduler::Create(options, Config(), executor);
  EXPECT_TRUE(scheduler.ok()) << scheduler.status();
  TwoRequests run;
  run.results.assign(2, absl::UnknownError("not finished"));
  for (int r = 0; r < 2; ++r) {
    SchedulerRequest request{.request_id = absl::StrCat("r", r),
                             .prompt = {1, 2, 3, static_cast<int32_t>(4 + r)},
                             .params = Params()};
    request.callbacks.on_done = [&run, r](absl::StatusOr<RequestResult> result) {
      run.results[r] = std::move(result);
    };
    EXPECT_TRUE((*scheduler)->Submit(std::move(request)).ok());
  }
  int stalled = 0;
  while (run.steps < max_steps && (*scheduler)->Stats().running + (*scheduler)->Stats().waiting > 0) {
    const StepReport report = (*scheduler)->Step();
    ++run.steps;
    now += step_time;
    if (report.stalled && ++stalled >= restore_after) executor.capacity = 1000;
  }
  return run;
}

std::vector<std::vector<int32_t>> Ids(const TwoRequests& run) {
  std::vector<std::vector<int32_t>> ids;
  for (const auto& r : run.results) ids.push_back(r.ok() ? r->ids : std::vector<int32_t>{});
  return ids;
}

struct FailureCase {
  std::string name;
  std::vector<Fault> script;           // faults of the first Execute calls
  int max_step_retries = 3;
  absl::StatusCode expected = absl::StatusCode::kOk;  // both requests' outcome
  std::string message{};               // in the error, when not OK
  bool reprefills = false;             // some plan went out with reset_cache
};

class SchedulerFailureTest : public ::testing::TestWithParam<FailureCase> {};

TEST_P(SchedulerFailureTest, OutcomeMatchesTheTable) {
  const FailureCase& c = GetParam();
  FakeStepExecutor clean;
  const TwoRequests reference = RunTwo(clean, {});
  ASSERT_TRUE(reference.results[0].ok()) << reference.results[0].status();
  ASSERT_EQ(reference.results[0]->ids.size(), 24u);

  FakeStepExecutor faulty;
  faulty.script.assign(c.script.begin(), c.script.end());
  const TwoRequests run = RunTwo(faulty, {.max_step_retries = c.max_step_retries});
  for (const auto& result : run.results) {
    EXPECT_EQ(result.status().code(), c.expected) << result.status();
    if (!result.ok()) {
      EXPECT_THAT(result.status().message(), HasSubstr(c.message));
    }
  }
  if (c.expected == absl::StatusCode::kOk) {
    EXPECT_EQ(Ids(run), Ids(reference));
  }
  EXPECT_EQ(faulty.reset_plans > 0, c.reprefills) << faulty.reset_plans;
}

INSTANTIATE_TEST_SUITE_P(
    Table, SchedulerFailureTest,
    ::testing::Values(
        FailureCase{.name = "AbortedOnceReprefillsAndRetries",
                    .script = {Fault::kAborted},
                    .reprefills = true},
        FailureCase{.name = "AbortedUpToTheRetryBudgetStillSucceeds",
                    .script = {Fault::kAborted, Fault::kAborted, Fault::kAborted},
                    .max_step_retries = 3,
                    .reprefills = true},
        FailureCase{.name = "AbortedPastTheRetryBudgetFailsTheBatch",
                    .script = {Fault::kAborted, Fault::kAborted, Fault::kAborted},
                    .max_step_retries = 2,
                    .expected = absl::StatusCode::kAborted,
                    .message = "fake replica restarted",
                    .reprefills = true},
        FailureCase{.name = "UnavailableWithoutCapacityHoldsThenReprefills",
                    .script = {Fault::kUnavailableNoCapacity},
                    .reprefills = true},
        FailureCase{.name = "OtherErrorsFailTheBatch",
                    .script = {Fault::kInternal},
                    .expected = absl::StatusCode::kInternal,
                    .message = "fake forward failed"}),
    [](const ::testing::TestParamInfo<FailureCase>& info) { return info.param.name; });

// One replica of two dies mid-step: only its sequence re-prefills; the other keeps the proposal
// it got and its cache (one reset plan, not two), and both outputs are unchanged.
TEST(SchedulerReplicaLossTest, OnlyTheLostSequenceReprefills) {
  FakeStepExecutor clean;
  const TwoRequests expected = RunTwo(clean, SchedulerOptions());
  FakeStepExecutor executor;
  executor.script = {Fault::kNone, Fault::kNone, Fault::kLoseFirstSequence};
  const TwoRequests run = RunTwo(executor, SchedulerOptions());
  EXPECT_EQ(Ids(run), Ids(expected));
  EXPECT_EQ(executor.reset_plans, 1);
  EXPECT_EQ(executor.execute_calls, clean.execute_calls + 1);  // the one retry, of one sequence

  // Without a partial answer every sequence of the batch re-prefills (two reset plans).
  FakeStepExecutor blunt;
  blunt.script = {Fault::kNone, Fault::kNone, Fault::kAborted};
  EXPECT_EQ(Ids(RunTwo(blunt, SchedulerOptions())), Ids(expected));
  EXPECT_EQ(blunt.reset_plans, 2);
}

TEST(SchedulerGraceTest, HoldingPastUnavailableGraceFailsTheRequests) {
  FakeStepExecutor executor;
  executor.capacity = 0;  // no replica ever serves
  const TwoRequests run = RunTwo(executor, {.unavailable_grace = absl::Seconds(5)},
                         /*restore_after=*/1000, absl::Seconds(1));
  for (const auto& result : run.results) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("no attention replica has served"));
  }
  EXPECT_EQ(executor.execute_calls, 0);
  // Held for the whole grace (one step per fake second), not failed at the first stall.
  EXPECT_GE(run.steps, 5);
  EXPECT_LE(run.steps, 7);
}

TEST(SchedulerGraceTest, CapacityBackWithinTheGraceLosesNothing) {
  FakeStepExecutor clean;
  const TwoRequests reference = RunTwo(clean, {});
  FakeStepExecutor executor;
  executor.script = {Fault::kUnavailableNoCapacity};
  const TwoRequests run = RunTwo(executor, {.unavailable_grace = absl::Seconds(5)},
                         /*restore_after=*/3, absl::Seconds(1));
  ASSERT_TRUE(run.results[0].ok()) << run.results[0].status();
  ASSERT_TRUE(run.results[1].ok()) << run.results[1].status();
  EXPECT_EQ(Ids(run), Ids(reference));
}

}  // namespace
}  // namespace dmoe::scheduler
