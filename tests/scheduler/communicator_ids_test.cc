// NCCL communicator ids from the scheduler (Cluster.GetCommunicator): the generation rules of
// CommunicatorIds with a counting factory, and the same over real gRPC on 127.0.0.1:0 through
// FetchCommunicatorId; in a build with NCCL the default factory's 128-byte ids (ncclGetUniqueId
// needs no GPU), otherwise its FAILED_PRECONDITION.
#include "scheduler/communicator_ids.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "scheduler/cluster_server.h"
#include "cluster/communicator_client.h"
#include "scheduler/membership.h"

namespace dmoe::scheduler {
namespace {

using ::testing::HasSubstr;

// Ids "id-1", "id-2", ... in call order.
UniqueIdFactory CountingFactory(int* calls) {
  return [calls]() -> absl::StatusOr<std::string> { return absl::StrCat("id-", ++*calls); };
}

TEST(CommunicatorIdsTest, OneIdPerGroupUntilItsCurrentGenerationFails) {
  int calls = 0;
  CommunicatorIds ids(CountingFactory(&calls));
  auto a = ids.Get("attention-0+experts-0-8", 0);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->unique_id, "id-1");
  EXPECT_EQ(a->generation, 1u);
  // Every rank of the group gets the same id.
  auto again = ids.Get("attention-0+experts-0-8", 0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->unique_id, "id-1");
  // Another group has its own.
  auto b = ids.Get("attention-1+experts-0-8", 0);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->unique_id, "id-2");
  // A rank saw generation 1 fail: a fresh id for everyone.
  auto replaced = ids.Get("attention-0+experts-0-8", 1);
  ASSERT_TRUE(replaced.ok());
  EXPECT_EQ(replaced->unique_id, "id-3");
  EXPECT_EQ(replaced->generation, 2u);
  // The peer reports the same failure later: it gets generation 2, no third id.
  auto peer = ids.Get("attention-0+experts-0-8", 1);
  ASSERT_TRUE(peer.ok());
  EXPECT_EQ(peer->unique_id, "id-3");
  EXPECT_EQ(calls, 3);
}

TEST(CommunicatorIdsTest, BadRequestsAndFactoryErrorsNameTheCause) {
  int calls = 0;
  CommunicatorIds ids(CountingFactory(&calls));
  EXPECT_EQ(ids.Get("", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ids.Get(std::string(257, 'g'), 0).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status future = ids.Get("g", 5).status();
  EXPECT_EQ(future.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(future.message()), HasSubstr("failed_generation: 5"));
  EXPECT_EQ(calls, 0);

  CommunicatorIds broken([]() -> absl::StatusOr<std::string> {
    return absl::UnavailableError("no network interface");
  });
  EXPECT_EQ(broken.Get("g", 0).status().code(), absl::StatusCode::kUnavailable);
}

class CommunicatorServiceTest : public ::testing::Test {
 protected:
  void Start(UniqueIdFactory factory) {
    cluster_ = std::make_unique<ClusterServer>(membership_, "", std::move(factory));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(cluster_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  absl::StatusOr<CommunicatorId> Fetch(const std::string& group, uint64_t failed = 0) {
    return cluster::FetchCommunicatorId(address_, group, failed, absl::Now() + absl::Seconds(10));
  }

  Membership membership_{{.num_experts = 16}};
  std::unique_ptr<ClusterServer> cluster_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(CommunicatorServiceTest, RanksGetTheSameIdOverGrpcAndAFreshOneAfterAFailure) {
  int calls = 0;
  Start(CountingFactory(&calls));
  auto rank0 = Fetch("g");
  auto rank1 = Fetch("g");
  ASSERT_TRUE(rank0.ok()) << rank0.status();
  ASSERT_TRUE(rank1.ok()) << rank1.status();
  EXPECT_EQ(rank0->unique_id, rank1->unique_id);
  auto fresh = Fetch("g", rank0->generation);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE(fresh->unique_id, rank0->unique_id);
  EXPECT_EQ(fresh->generation, 2u);
  absl::Status bad = Fetch("").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr(address_));
}

TEST_F(CommunicatorServiceTest, DefaultFactoryOfThisBuild) {
  Start(DefaultUniqueIdFactory());
  auto id = Fetch("g");
#if DMOE_TEST_WITH_NCCL
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->unique_id.size(), 128u);  // sizeof(ncclUniqueId)
  auto other = Fetch("h");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->unique_id, id->unique_id);
#else
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(id.status().message()), HasSubstr("without NCCL"));
#endif
}

TEST(CommunicatorClientTest, UnreachableSchedulerIsUnavailableOrDeadline) {
  absl::Status s = cluster::FetchCommunicatorId("127.0.0.1:1", "g", 0, absl::Now() + absl::Seconds(2))
                       .status();
  EXPECT_TRUE(s.code() == absl::StatusCode::kUnavailable ||
              s.code() == absl::StatusCode::kDeadlineExceeded)
      << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("127.0.0.1:1"));
}

}  // namespace
}  // namespace dmoe::scheduler
