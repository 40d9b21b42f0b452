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
  Placement p = m_.CurrentPlacement();
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
