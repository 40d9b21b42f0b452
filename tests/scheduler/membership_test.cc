// Membership and placement with a fake clock: registration, leases, placement versions.
#include "scheduler/membership.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dmoe::scheduler {
namespace {

using ::testing::ElementsAre;

class MembershipTest : public ::testing::Test {
 protected:
  Membership m_{{.num_experts = 16,
                 .heartbeat_period = absl::Milliseconds(500),
                 .lease = absl::Seconds(2),
                 .clock = [this] { return now_; }}};
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST_F(MembershipTest, PlacementGroupsReplicasByRangeAndTracksCoverage) {
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "e0a", 0, 8}).ok());
  cluster::Placement p = m_.CurrentPlacement();
  EXPECT_FALSE(p.complete);
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "e1", 8, 16}).ok());
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "e0b", 0, 8}).ok());
  ASSERT_TRUE(m_.Register({PodRole::kAttention, "a0"}).ok());
  p = m_.CurrentPlacement();
  EXPECT_TRUE(p.complete);
  ASSERT_EQ(p.shards.size(), 2u);
  EXPECT_THAT(p.shards[0].replicas, ElementsAre("e0a", "e0b"));
  EXPECT_THAT(p.shards[1].replicas, ElementsAre("e1"));
  EXPECT_THAT(m_.AttentionAddresses(), ElementsAre("a0"));
}

TEST_F(MembershipTest, MissedHeartbeatsDropThePodAndBumpTheVersion) {
  auto e0 = m_.Register({PodRole::kExpert, "e0", 0, 16});
  auto e1 = m_.Register({PodRole::kExpert, "e1", 0, 16});
  ASSERT_TRUE(e0.ok() && e1.ok());
  const uint64_t v = m_.placement_version();
  now_ += absl::Seconds(1);
  ASSERT_TRUE(m_.Heartbeat(*e0).ok());
  now_ += absl::Seconds(1.5);  // e1 last beat 2.5 s ago: expired
  EXPECT_THAT(m_.CurrentPlacement().shards[0].replicas, ElementsAre("e0"));
  EXPECT_GT(m_.placement_version(), v);
  EXPECT_EQ(m_.Heartbeat(*e1).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "e1", 0, 16}).ok());  // a replacement registers
  EXPECT_EQ(m_.CurrentPlacement().shards[0].replicas.size(), 2u);
}

TEST_F(MembershipTest, RejectsBadRangesAndOverlaps) {
  EXPECT_EQ(m_.Register({PodRole::kExpert, "x", 4, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m_.Register({PodRole::kExpert, "x", 0, 17}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "a", 0, 8}).ok());
  auto overlap = m_.Register({PodRole::kExpert, "b", 4, 12});
  EXPECT_EQ(overlap.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(overlap.status().message().find("overlaps"), std::string::npos);
  EXPECT_EQ(m_.Register({PodRole::kAttention, ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MembershipTest, ReportedFailureRemovesThePodUntilItRegistersAgain) {
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "e0", 0, 16}).ok());
  ASSERT_TRUE(m_.Register({PodRole::kExpert, "e1", 0, 16}).ok());
  m_.ReportFailure("e1");
  EXPECT_THAT(m_.CurrentPlacement().shards[0].replicas, ElementsAre("e0"));
}

}  // namespace
}  // namespace dmoe::scheduler

namespace dmoe::scheduler {
namespace {

// Expert autoscaling: heartbeats carry cumulative busy seconds; a shard's busy ratio is the
// smoothed mean over its replicas and its desired replica count covers the summed busy time
// at the target ratio (0.7).
TEST(MembershipLoadTest, BusySecondsBecomeBusyRatioAndDesiredReplicas) {
  absl::Time now = absl::FromUnixSeconds(1000);
  Membership m({.num_experts = 16, .lease = absl::Seconds(10), .clock = [&] { return now; }});
  auto a = m.Register({PodRole::kExpert, "a", 0, 8});
  auto b = m.Register({PodRole::kExpert, "b", 8, 16});
  ASSERT_TRUE(a.ok() && b.ok());
  double busy_a = 0, busy_b = 0;
  for (int i = 0; i < 40; ++i) {  // a computes 90% of the time, b 10%
    now += absl::Seconds(1);
    busy_a += 0.9;
    busy_b += 0.1;
    ASSERT_TRUE(m.Heartbeat(*a, busy_a).ok());
    ASSERT_TRUE(m.Heartbeat(*b, busy_b).ok());
  }
  std::vector<ShardStatus> shards = m.ShardStatuses();
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0].expert_first, 0);
  EXPECT_NEAR(shards[0].busy_ratio, 0.9, 1e-3);
  EXPECT_EQ(shards[0].desired_replicas, 2);  // ceil(0.9 / 0.7)
  EXPECT_NEAR(shards[1].busy_ratio, 0.1, 1e-3);
  EXPECT_EQ(shards[1].desired_replicas, 1);

  // A second replica of the hot shard halves each replica's load; the sum still needs 2.
  auto a2 = m.Register({PodRole::kExpert, "a2", 0, 8});
  ASSERT_TRUE(a2.ok());
  double busy_a2 = 0;
  for (int i = 0; i < 40; ++i) {
    now += absl::Seconds(1);
    busy_a += 0.45;
    busy_a2 += 0.45;
    ASSERT_TRUE(m.Heartbeat(*a, busy_a).ok());
    ASSERT_TRUE(m.Heartbeat(*a2, busy_a2).ok());
    ASSERT_TRUE(m.Heartbeat(*b, busy_b).ok());
  }
  shards = m.ShardStatuses();
  EXPECT_EQ(shards[0].replicas, 2);
  EXPECT_NEAR(shards[0].busy_ratio, 0.45, 1e-3);
  EXPECT_EQ(shards[0].desired_replicas, 2);
  EXPECT_EQ(shards[1].desired_replicas, 1);  // idle shards keep one replica
}

TEST(MembershipLoadTest, RemovedPodLeavesThePlacementAtOnce) {
  Membership m({.num_experts = 16});
  auto a = m.Register({PodRole::kExpert, "a", 0, 16});
  auto b = m.Register({PodRole::kExpert, "b", 0, 16});
  ASSERT_TRUE(a.ok() && b.ok());
  const uint64_t v = m.placement_version();
  m.Remove(*b);
  EXPECT_GT(m.placement_version(), v);
  EXPECT_THAT(m.CurrentPlacement().shards[0].replicas, ::testing::ElementsAre("a"));
  EXPECT_EQ(m.ShardStatuses()[0].replicas, 1);
}

}  // namespace
}  // namespace dmoe::scheduler

namespace dmoe::scheduler {
namespace {

// A restarted scheduler (a new Membership) never hands out an id the old one did, so a pod
// that still holds an old id gets NOT_FOUND (and registers again) instead of renewing the
// lease of whichever new pod got the same number.
TEST(MembershipIdsTest, UniqueAcrossRestarts) {
  Membership before({.num_experts = 16});
  Membership after({.num_experts = 16});
  const PodInfo attention{.role = PodRole::kAttention, .address = "10.0.0.1:1"};
  const PodInfo other{.role = PodRole::kAttention, .address = "10.0.0.2:1"};
  absl::StatusOr<uint64_t> old_id = before.Register(attention);
  ASSERT_TRUE(old_id.ok());
  absl::StatusOr<uint64_t> new_id = after.Register(other);
  ASSERT_TRUE(new_id.ok());
  EXPECT_NE(*old_id >> 32, *new_id >> 32);  // different epochs
  EXPECT_EQ(after.Heartbeat(*old_id).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(after.Heartbeat(*new_id).ok());
  // Within one scheduler ids are distinct and stable for a re-registering pod.
  absl::StatusOr<uint64_t> again = after.Register(other);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *new_id);
  absl::StatusOr<uint64_t> second = after.Register(attention);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(*second, *new_id);
}

}  // namespace
}  // namespace dmoe::scheduler
