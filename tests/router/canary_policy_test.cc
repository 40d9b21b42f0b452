// CanaryPolicy and TrafficSplit (unit): windows on a fake clock, the bounds, weights and
// sticky buckets, validation, rollback.
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/canary_policy.h"
#include "router/traffic_split.h"
#include "tests/testing/status_matchers.h"

namespace dmoe::router {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::StatusCode kOk = absl::StatusCode::kOk;
constexpr absl::StatusCode kUnavailable = absl::StatusCode::kUnavailable;

struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1700000000);
  void Advance(absl::Duration d) { now += d; }
};

TEST(CanaryPolicyTest, ServerFaultsCountAsErrorsCallerMistakesDoNot) {
  for (absl::StatusCode code :
       {absl::StatusCode::kUnavailable, absl::StatusCode::kInternal,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kUnknown, absl::StatusCode::kDataLoss}) {
    EXPECT_TRUE(CanaryPolicy::CountsAsError(code)) << absl::StatusCodeToString(code);
  }
  for (absl::StatusCode code :
       {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument, absl::StatusCode::kCancelled,
        absl::StatusCode::kNotFound, absl::StatusCode::kFailedPrecondition,
        absl::StatusCode::kOutOfRange}) {
    EXPECT_FALSE(CanaryPolicy::CountsAsError(code)) << absl::StatusCodeToString(code);
  }
}

TEST(CanaryPolicyTest, NoVerdictBeforeMinRequests) {
  FakeClock clock;
  CanaryPolicy policy({.window = absl::Seconds(60), .min_requests = 20, .max_error_ratio = 0.05});
  for (int i = 0; i < 19; ++i) {
    policy.Record("v2", clock.now, kUnavailable, absl::Milliseconds(5));
    EXPECT_FALSE(policy.Check("v2", clock.now)) << i;
  }
  policy.Record("v2", clock.now, kUnavailable, absl::Milliseconds(5));
  std::optional<Breach> breach = policy.Check("v2", clock.now);
  ASSERT_TRUE(breach);
  EXPECT_EQ(breach->bound, "error_ratio");
  EXPECT_DOUBLE_EQ(breach->limit, 0.05);
  EXPECT_DOUBLE_EQ(breach->measured, 1.0);
  EXPECT_EQ(breach->stats.requests, 20);
}

TEST(CanaryPolicyTest, ErrorRatioMustExceedTheBound) {
  FakeClock clock;
  CanaryPolicy policy({.min_requests = 20, .max_error_ratio = 0.05});
  for (int i = 0; i < 100; ++i) {
    policy.Record("v2", clock.now, i < 5 ? kUnavailable : kOk, absl::Milliseconds(5));
  }
  EXPECT_FALSE(policy.Check("v2", clock.now));  // 5 / 100 is not above 0.05
  policy.Record("v2", clock.now, absl::StatusCode::kInternal, absl::Milliseconds(5));
  EXPECT_TRUE(policy.Check("v2", clock.now));   // 6 / 101
  // Client mistakes do not count.
  CanaryPolicy lenient({.min_requests = 20, .max_error_ratio = 0.05});
  for (int i = 0; i < 50; ++i) {
    lenient.Record("v2", clock.now, absl::StatusCode::kInvalidArgument, absl::Milliseconds(5));
  }
  EXPECT_FALSE(lenient.Check("v2", clock.now));
}

TEST(CanaryPolicyTest, OutcomesLeaveTheWindow) {
  FakeClock clock;
  CanaryPolicy policy({.window = absl::Seconds(60), .min_requests = 20});
  for (int i = 0; i < 30; ++i) policy.Record("v2", clock.now, kUnavailable, absl::Seconds(1));
  clock.Advance(absl::Seconds(59));
  EXPECT_EQ(policy.Stats("v2", clock.now).requests, 30);
  for (int i = 0; i < 10; ++i) policy.Record("v2", clock.now, kOk, absl::Seconds(1));
  clock.Advance(absl::Seconds(1));  // the first 30 are now exactly one window old
  WindowStats stats = policy.Stats("v2", clock.now);
  EXPECT_EQ(stats.requests, 10);
  EXPECT_EQ(stats.errors, 0);
  EXPECT_FALSE(policy.Check("v2", clock.now));  // 10 < min_requests
  clock.Advance(absl::Seconds(60));
  EXPECT_EQ(policy.Stats("v2", clock.now).requests, 0);
  EXPECT_EQ(policy.Stats("never-seen", clock.now).requests, 0);
}

TEST(CanaryPolicyTest, LatencyP95Bound) {
  FakeClock clock;
  CanaryPolicy policy(
      {.min_requests = 20, .max_error_ratio = 1, .max_latency_p95 = absl::Seconds(1)});
  // 19 fast calls and 1 slow one: the nearest-rank p95 of 20 is the 19th, a fast one.
  for (int i = 0; i < 19; ++i) policy.Record("v2", clock.now, kOk, absl::Milliseconds(10));
  policy.Record("v2", clock.now, kOk, absl::Seconds(3));
  EXPECT_EQ(policy.Stats("v2", clock.now).p95_latency, absl::Milliseconds(10));
  EXPECT_FALSE(policy.Check("v2", clock.now));
  // A second slow one out of 21: ceil(0.95 * 21) = 20th is slow.
  policy.Record("v2", clock.now, kOk, absl::Seconds(2));
  std::optional<Breach> breach = policy.Check("v2", clock.now);
  ASSERT_TRUE(breach);
  EXPECT_EQ(breach->bound, "latency_p95_seconds");
  EXPECT_DOUBLE_EQ(breach->limit, 1.0);
  EXPECT_DOUBLE_EQ(breach->measured, 2.0);
  // Zero bound: latency never breaches.
  CanaryPolicy off({.min_requests = 1, .max_error_ratio = 1});
  off.Record("v2", clock.now, kOk, absl::Hours(1));
  EXPECT_FALSE(off.Check("v2", clock.now));
}

TEST(CanaryPolicyTest, OptionsValidate) {
  DMOE_EXPECT_OK(CanaryPolicyOptions{}.Validate());
  EXPECT_THAT(CanaryPolicyOptions{.window = absl::ZeroDuration()}.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("window")));
  EXPECT_THAT(CanaryPolicyOptions{.min_requests = 0}.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("min_requests")));
  EXPECT_THAT(CanaryPolicyOptions{.max_error_ratio = 1.5}.Validate(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_error_ratio")));
}

TEST(TrafficSplitTest, ParseAndFormat) {
  DMOE_ASSERT_OK_AND_ASSIGN(std::vector<VersionWeight> w, ParseSplit(" v1=90, v2 = 10", "--split"));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].version, "v1");
  EXPECT_EQ(w[1].percent, 10);
  EXPECT_EQ(FormatSplit(w), "v1=90,v2=10");
  EXPECT_THAT(ParseSplit("v1", "--split"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--split")));
  EXPECT_THAT(ParseSplit("v1=x", "--split"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSplit("", "--split"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(TrafficSplitTest, BucketsAreStableAndSpread) {
  EXPECT_EQ(BucketOfKey("alice"), BucketOfKey("alice"));
  std::vector<int> per_bucket(kNumBuckets, 0);
  for (int i = 0; i < 10000; ++i) ++per_bucket[BucketOfKey("key-" + std::to_string(i))];
  for (int b = 0; b < kNumBuckets; ++b) {
    EXPECT_GT(per_bucket[b], 50) << b;  // 100 expected
    EXPECT_LT(per_bucket[b], 150) << b;
  }
}

TEST(TrafficSplitTest, CumulativeBucketsInDeclarationOrder) {
  DMOE_ASSERT_OK_AND_ASSIGN(
      auto split, TrafficSplit::Create({.versions = {"v1", "v2", "v3"},
                                        .weights = {{"v1", 70}, {"v2", 20}, {"v3", 10}}}));
  EXPECT_EQ(split->VersionOfBucket(0), "v1");
  EXPECT_EQ(split->VersionOfBucket(69), "v1");
  EXPECT_EQ(split->VersionOfBucket(70), "v2");
  EXPECT_EQ(split->VersionOfBucket(89), "v2");
  EXPECT_EQ(split->VersionOfBucket(90), "v3");
  EXPECT_EQ(split->VersionOfBucket(99), "v3");
  // Growing the last version only moves keys onto it.
  std::map<std::string, std::string> before;
  for (int i = 0; i < 500; ++i) {
    std::string key = "user-" + std::to_string(i);
    DMOE_ASSERT_OK_AND_ASSIGN(before[key], split->Pick(key, ""));
  }
  DMOE_ASSERT_OK(split->SetSplit({{"v1", 40}, {"v2", 20}, {"v3", 40}}, ""));
  for (const auto& [key, version] : before) {
    DMOE_ASSERT_OK_AND_ASSIGN(std::string now, split->Pick(key, ""));
    if (version == "v3") {
      EXPECT_EQ(now, "v3") << key;
    }
    if (now == "v1") {
      EXPECT_EQ(version, "v1") << key;
    }
  }
}

TEST(TrafficSplitTest, ExplicitVersion) {
  DMOE_ASSERT_OK_AND_ASSIGN(auto split, TrafficSplit::Create({.versions = {"v1", "v2"}}));
  EXPECT_EQ(*split->Pick("k", ""), "v1");  // default: 100 to the first
  EXPECT_EQ(*split->Pick("k", "v2"), "v2");
  EXPECT_THAT(split->Pick("k", "v9"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.version")));
}

TEST(TrafficSplitTest, ValidationNamesTheField) {
  auto weights_error = [](std::vector<VersionWeight> w) {
    return TrafficSplit::Create({.versions = {"v1", "v2"}, .weights = std::move(w)}).status();
  };
  EXPECT_THAT(weights_error({{"v1", 90}, {"v3", 10}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown version 'v3'")));
  EXPECT_THAT(weights_error({{"v1", 90}, {"v2", 20}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sum to 100, got 110")));
  EXPECT_THAT(weights_error({{"v1", 110}, {"v2", -10}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("[0, 100]")));
  EXPECT_THAT(weights_error({{"v1", 50}, {"v1", 50}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
  EXPECT_THAT(TrafficSplit::Create({.versions = {"v1", "v2"}, .stable = "v7"}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stable")));
  EXPECT_THAT(TrafficSplit::Create({.versions = {"v1", "v1"}}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("versions")));

  DMOE_ASSERT_OK_AND_ASSIGN(auto split, TrafficSplit::Create({.versions = {"v1", "v2"}}));
  EXPECT_THAT(split->SetSplit({{"v1", 95}}, ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("weights")));
  EXPECT_THAT(split->SetSplit({{"v1", 100}}, "v3"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stable")));
  EXPECT_EQ(split->Snapshot().versions[0].percent, 100);  // unchanged by the refusals
}

TEST(TrafficSplitTest, RollsBackABreakingCanaryOnly) {
  FakeClock clock;
  DMOE_ASSERT_OK_AND_ASSIGN(
      auto split,
      TrafficSplit::Create({.versions = {"v1", "v2"},
                            .weights = {{"v1", 50}, {"v2", 50}},
                            .stable = "v1",
                            .rollback = {.min_requests = 10, .max_error_ratio = 0.2},
                            .clock = [&clock] { return clock.now; }}));
  // The stable version is never rolled back, whatever its errors.
  for (int i = 0; i < 30; ++i) {
    EXPECT_FALSE(split->Record("v1", kUnavailable, absl::Milliseconds(1)));
  }
  for (int i = 0; i < 9; ++i) {
    EXPECT_FALSE(split->Record("v2", kUnavailable, absl::Milliseconds(1))) << i;
    clock.Advance(absl::Seconds(1));
  }
  std::optional<RollbackEvent> event = split->Record("v2", kUnavailable, absl::Milliseconds(1));
  ASSERT_TRUE(event);
  EXPECT_EQ(event->version, "v2");
  EXPECT_EQ(event->breach.bound, "error_ratio");
  EXPECT_DOUBLE_EQ(event->breach.measured, 1.0);
  EXPECT_EQ(event->at, clock.now);
  SplitSnapshot s = split->Snapshot();
  EXPECT_EQ(s.versions[0].percent, 100);
  EXPECT_EQ(s.versions[1].percent, 0);
  EXPECT_TRUE(s.rolled_back);
  EXPECT_EQ(s.rollbacks, 1);
  EXPECT_EQ(s.versions[1].window.requests, 10);
  EXPECT_EQ(s.versions[1].window.errors, 10);
  // A canary at weight 0 (explicit-version calls only) is not rolled back again.
  EXPECT_FALSE(split->Record("v2", kUnavailable, absl::Milliseconds(1)));
  EXPECT_EQ(split->Snapshot().rollbacks, 1);

  // A new split clears the flag and the re-promoted canary's window.
  DMOE_ASSERT_OK(split->SetSplit({{"v1", 90}, {"v2", 10}}, ""));
  s = split->Snapshot();
  EXPECT_FALSE(s.rolled_back);
  EXPECT_EQ(s.versions[1].window.requests, 0);
  ASSERT_TRUE(s.last_rollback);  // history stays
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(split->Record("v2", kOk, absl::Milliseconds(1)));
  // Old outcomes leave the window: 60 s later 10 errors out of 10 calls breach again.
  clock.Advance(absl::Seconds(61));
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(split->Record("v2", kUnavailable, absl::Seconds(1)));
  EXPECT_TRUE(split->Record("v2", kUnavailable, absl::Seconds(1)));
  EXPECT_EQ(split->Snapshot().rollbacks, 2);
}

}  // namespace
}  // namespace dmoe::router
