// `--expert-transport nccl` without a GPU (issue 16): the attention side's per-peer state
// machine (NcclPeering) with fake links, the expert side's checks (NcclPairingHost), and the
// handshake end to end over real gRPC (NcclPairingService on 127.0.0.1:0) with communicator ids
// from the scheduler's CommunicatorIds (generation rules included). What needs two GPUs (the
// link itself: communicator, exchange rounds, the serve loop) is not here.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cluster/grpc_server.h"
#include "expert_service/nccl_pairing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/endpoint.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "scheduler/communicator_ids.h"
#include "tests/testing/status_matchers.h"
#include "transport/nccl_pairing_client.h"
#include "transport/nccl_peering.h"

namespace dmoe::transport {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kHidden = 4;

// A gRPC stand-in: out[i][j] = hidden[i][j] + 1; counts calls.
class FakeGrpcTransport final : public ExpertTransport {
 public:
  explicit FakeGrpcTransport(std::string address) : address_(std::move(address)) {}
  const std::string& address() const override { return address_; }
  absl::Status RunExperts(const ExpertRows& rows, absl::Time, float* out) override {
    ++calls;
    for (int64_t i = 0; i < rows.num_rows * rows.hidden_size; ++i) out[i] = rows.hidden[i] + 1;
    return absl::OkStatus();
  }
  absl::StatusOr<ShardInfo> GetShardInfo(absl::Time) override {
    ShardInfo info;
    info.hidden_size = kHidden;
    info.expert_first = 0;
    info.expert_last = 8;
    return info;
  }
  std::atomic<int> calls{0};

 private:
  std::string address_;
};

// An NCCL link stand-in: out = hidden + 1 like the shard; fails every call once `broken`.
struct FakeLinkState {
  std::atomic<bool> broken{false};
  std::atomic<int> calls{0};
  std::atomic<int> heartbeats{0};
};
class FakeLink final : public NcclLink {
 public:
  explicit FakeLink(std::shared_ptr<FakeLinkState> state) : state_(std::move(state)) {}
  absl::Status RunExperts(const ExpertRows& rows, absl::Time, float* out) override {
    if (state_->broken) return absl::UnavailableError("NCCL peer died (fake)");
    if (rows.hidden_size != kHidden) return absl::InvalidArgumentError("hidden_size");
    ++state_->calls;
    for (int64_t i = 0; i < rows.num_rows * rows.hidden_size; ++i) out[i] = rows.hidden[i] + 1;
    return absl::OkStatus();
  }
  absl::Status Heartbeat(absl::Time) override {
    if (state_->broken) return absl::DeadlineExceededError("heartbeat round timed out (fake)");
    ++state_->heartbeats;
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<FakeLinkState> state_;
};

// The scheduler's id rules (real CommunicatorIds) with fake 128-byte ids.
class FakeScheduler {
 public:
  FakeScheduler()
      : ids_([this]() -> absl::StatusOr<std::string> {
          return std::string(128, static_cast<char>('a' + made_++ % 26));
        }) {}
  absl::StatusOr<CommunicatorId> Fetch(const std::string& group, uint64_t failed) {
    return ids_.Get(group, failed);
  }

 private:
  std::atomic<int> made_{0};
  scheduler::CommunicatorIds ids_;
};

struct Harness {
  explicit Harness(NcclPeeringOptions options = {}) {
    options.attention_address = "attn-0:1";
    options.hidden_size = kHidden;
    options.poll_interval = absl::ZeroDuration();  // PollOnce by hand
    options.min_backoff = absl::Milliseconds(1);
    options.max_backoff = absl::Milliseconds(1);
    options.heartbeat = absl::Milliseconds(1);
    options.metrics = {.registry = registry, .model_version = "v1"};
    NcclPeeringDeps deps;
    deps.fetch_id = [this](const std::string& group, uint64_t failed, absl::Time) {
      absl::MutexLock lock(&mu);
      fetches.push_back(absl::StrCat(group, "#", failed));
      return scheduler.Fetch(group, failed);
    };
    deps.pair = [this](const NcclPairSpec& spec, absl::Time) -> absl::StatusOr<NcclPairAnswer> {
      if (!pair_status.ok()) return pair_status;
      NcclPairAnswer answer;
      answer.generation = spec.generation;
      return answer;
    };
    deps.connect = [this](const NcclPairSpec& spec, const CommunicatorId& id,
                          const NcclPairAnswer&, const ShardInfo& shard)
        -> absl::StatusOr<NcclLinkPtr> {
      EXPECT_EQ(id.unique_id.size(), 128u);
      EXPECT_EQ(shard.hidden_size, kHidden);
      EXPECT_EQ(spec.generation, id.generation);
      if (!connect_status.ok()) return connect_status;
      link_state = std::make_shared<FakeLinkState>();
      return std::make_unique<FakeLink>(link_state);
    };
    auto created = NcclPeering::Create(options, std::move(deps));
    EXPECT_TRUE(created.ok()) << created.status();
    peering = *std::move(created);
    grpc = std::make_shared<FakeGrpcTransport>("expert-0:2");
    transport = peering->Wrap(grpc);
  }

  // One row through the transport; expects hidden + 1 whichever way it went.
  absl::Status Call() {
    std::vector<float> hidden(kHidden, 1.5f), out(kHidden, 0);
    std::vector<int32_t> ids = {3};
    ExpertRows rows;
    rows.layer = 1;
    rows.num_rows = 1;
    rows.hidden_size = kHidden;
    rows.hidden = hidden.data();
    rows.expert_ids = ids.data();
    absl::Status s = transport->RunExperts(rows, absl::Now() + absl::Seconds(5), out.data());
    if (s.ok()) {
      EXPECT_EQ(out, std::vector<float>(kHidden, 2.5f));
    }
    return s;
  }

  NcclPeering::PeerStatus Peer() { return peering->Peers().at(0); }

  std::string Metrics() {
    return prometheus::TextSerializer().Serialize(registry->Collect());
  }

  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  FakeScheduler scheduler;
  absl::Mutex mu;
  std::vector<std::string> fetches;
  absl::Status pair_status;
  absl::Status connect_status;
  std::shared_ptr<FakeLinkState> link_state;
  std::unique_ptr<NcclPeering> peering;
  std::shared_ptr<FakeGrpcTransport> grpc;
  ExpertTransportSharedPtr transport;
};

TEST(ExpertTransportFlagTest, ParsesGrpcAndNccl) {
  EXPECT_EQ(*ParseExpertTransportKind("grpc"), ExpertTransportKind::kGrpc);
  EXPECT_EQ(*ParseExpertTransportKind("nccl"), ExpertTransportKind::kNccl);
  EXPECT_THAT(ParseExpertTransportKind("rdma"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--expert-transport")));
  EXPECT_EQ(NcclPairGroup("a:1", "e:2"), "nccl:a:1+e:2");
}

TEST(ExpertTransportFlagTest, NcclNeedsCudaAndAScheduler) {
  DMOE_EXPECT_OK(CheckExpertTransportFlags(ExpertTransportKind::kGrpc, "cpu", false));
  DMOE_EXPECT_OK(CheckExpertTransportFlags(ExpertTransportKind::kNccl, "cuda", true));
  EXPECT_THAT(CheckExpertTransportFlags(ExpertTransportKind::kNccl, "cpu", true),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--device cuda")));
  EXPECT_THAT(CheckExpertTransportFlags(ExpertTransportKind::kNccl, "cuda", false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--scheduler")));
}

TEST(NcclPeeringTest, OptionsNameTheField) {
  NcclPeeringOptions options;
  options.attention_address = "a:1";
  EXPECT_THAT(options.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hidden_size")));
  options.hidden_size = 8;
  DMOE_EXPECT_OK(options.Validate());
  options.max_backoff = absl::Milliseconds(1);
  EXPECT_THAT(options.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("backoff")));
  EXPECT_THAT(NcclPeering::Create({.attention_address = "a:1", .hidden_size = 8}, {}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fetch_id")));
}

TEST(NcclPeeringTest, CallsGoOverGrpcUntilPairedThenOverNccl) {
  Harness h;
  DMOE_ASSERT_OK(h.Call());
  EXPECT_EQ(h.grpc->calls, 1);
  EXPECT_FALSE(h.Peer().on_nccl);
  h.peering->PollOnce();  // pairs
  ASSERT_TRUE(h.Peer().on_nccl) << h.Peer().last_error;
  EXPECT_EQ(h.Peer().generation, 1u);
  DMOE_ASSERT_OK(h.Call());
  DMOE_ASSERT_OK(h.Call());
  EXPECT_EQ(h.grpc->calls, 1);
  EXPECT_EQ(h.link_state->calls, 2);
  EXPECT_EQ(h.Peer().nccl_calls, 2);
  EXPECT_EQ(h.Peer().grpc_calls, 1);
  EXPECT_THAT(h.Metrics(), HasSubstr("dmoe_expert_transport_peers{model_version=\"v1\",transport=\"nccl\"} 1"));
  EXPECT_THAT(h.Metrics(), HasSubstr("dmoe_expert_transport_peers{model_version=\"v1\",transport=\"grpc\"} 0"));
  // The same pod wrapped again (a new placement version) shares the peer.
  auto again = h.peering->Wrap(std::make_shared<FakeGrpcTransport>("expert-0:2"));
  EXPECT_EQ(h.peering->Peers().size(), 1u);
  EXPECT_EQ(again->address(), "expert-0:2");
}

TEST(NcclPeeringTest, ALinkFailureFallsBackToGrpcInTheSameCallAndRebuildsWithAFreshId) {
  Harness h;
  h.peering->PollOnce();
  ASSERT_TRUE(h.Peer().on_nccl);
  std::shared_ptr<FakeLinkState> first = h.link_state;
  first->broken = true;
  DMOE_ASSERT_OK(h.Call());  // the request does not fail: gRPC answered it
  EXPECT_EQ(h.grpc->calls, 1);
  EXPECT_FALSE(h.Peer().on_nccl);
  EXPECT_THAT(h.Peer().last_error, HasSubstr("NCCL peer died"));
  EXPECT_THAT(h.Metrics(), HasSubstr("reason=\"link_failed\"} 1"));
  DMOE_ASSERT_OK(h.Call());  // still gRPC until rebuilt
  EXPECT_EQ(h.grpc->calls, 2);
  absl::SleepFor(absl::Milliseconds(2));  // the backoff
  h.peering->PollOnce();
  ASSERT_TRUE(h.Peer().on_nccl) << h.Peer().last_error;
  EXPECT_EQ(h.Peer().generation, 2u);  // the scheduler replaced generation 1
  EXPECT_EQ(h.Peer().pairings, 2);
  {
    absl::MutexLock lock(&h.mu);
    EXPECT_THAT(h.fetches, ::testing::ElementsAre("nccl:attn-0:1+expert-0:2#0",
                                                  "nccl:attn-0:1+expert-0:2#1"));
  }
  DMOE_ASSERT_OK(h.Call());
  EXPECT_EQ(h.link_state->calls, 1);
  EXPECT_EQ(h.grpc->calls, 2);
}

TEST(NcclPeeringTest, IdleLinksGetHeartbeatsAndAFailedHeartbeatDropsTheLink) {
  Harness h;
  h.peering->PollOnce();
  ASSERT_TRUE(h.Peer().on_nccl);
  absl::SleepFor(absl::Milliseconds(2));
  h.peering->PollOnce();
  EXPECT_EQ(h.link_state->heartbeats, 1);
  h.link_state->broken = true;
  absl::SleepFor(absl::Milliseconds(2));
  h.peering->PollOnce();
  EXPECT_FALSE(h.Peer().on_nccl);
  EXPECT_THAT(h.Metrics(), HasSubstr("reason=\"heartbeat_failed\"} 1"));
  DMOE_ASSERT_OK(h.Call());
  EXPECT_EQ(h.grpc->calls, 1);
}

TEST(NcclPeeringTest, ARefusingPodStaysOnGrpc) {
  Harness h;
  h.pair_status = absl::FailedPreconditionError("this expert pod serves gRPC only");
  h.peering->PollOnce();
  EXPECT_FALSE(h.Peer().on_nccl);
  EXPECT_THAT(h.Peer().last_error, HasSubstr("gRPC only"));
  EXPECT_THAT(h.Metrics(), HasSubstr("reason=\"refused\"} 1"));
  DMOE_ASSERT_OK(h.Call());
  EXPECT_EQ(h.grpc->calls, 1);
  // The pod is restarted with --expert-transport nccl: the next attempt pairs.
  h.pair_status = absl::OkStatus();
  absl::SleepFor(absl::Milliseconds(2));
  h.peering->PollOnce();
  EXPECT_TRUE(h.Peer().on_nccl);
}

TEST(NcclPeeringTest, AFailedJoinBurnsThatGeneration) {
  Harness h;
  h.connect_status = absl::DeadlineExceededError("rank 1 never joined");
  h.peering->PollOnce();
  EXPECT_FALSE(h.Peer().on_nccl);
  EXPECT_THAT(h.Metrics(), HasSubstr("reason=\"pairing_failed\"} 1"));
  h.connect_status = absl::OkStatus();
  absl::SleepFor(absl::Milliseconds(2));
  h.peering->PollOnce();
  ASSERT_TRUE(h.Peer().on_nccl);
  EXPECT_EQ(h.Peer().generation, 2u);
}

TEST(NcclPeeringTest, WithoutALinkFactoryEveryPeerStaysOnGrpc) {
  NcclPeeringDeps deps;
  deps.fetch_id = [](const std::string&, uint64_t, absl::Time) -> absl::StatusOr<CommunicatorId> {
    ADD_FAILURE() << "no scheduler call without a link factory";
    return absl::InternalError("unexpected");
  };
  deps.pair = [](const NcclPairSpec&, absl::Time) -> absl::StatusOr<NcclPairAnswer> {
    return absl::InternalError("unexpected");
  };
  auto peering = NcclPeering::Create({.attention_address = "a:1", .hidden_size = kHidden,
                                      .poll_interval = absl::ZeroDuration()},
                                     std::move(deps));
  ASSERT_TRUE(peering.ok());
  auto grpc = std::make_shared<FakeGrpcTransport>("e:1");
  auto t = (*peering)->Wrap(grpc);
  (*peering)->PollOnce();
  EXPECT_FALSE((*peering)->Peers().at(0).on_nccl);
  EXPECT_THAT((*peering)->Peers().at(0).last_error, HasSubstr("--device cuda"));
}

TEST(NcclPeeringTest, TheBackgroundThreadPairs) {
  NcclPeeringDeps deps;
  FakeScheduler scheduler;
  deps.fetch_id = [&](const std::string& g, uint64_t f, absl::Time) { return scheduler.Fetch(g, f); };
  deps.pair = [](const NcclPairSpec& spec, absl::Time) -> absl::StatusOr<NcclPairAnswer> {
    NcclPairAnswer a;
    a.generation = spec.generation;
    return a;
  };
  auto state = std::make_shared<FakeLinkState>();
  deps.connect = [&](const NcclPairSpec&, const CommunicatorId&, const NcclPairAnswer&,
                     const ShardInfo&) -> absl::StatusOr<NcclLinkPtr> {
    return std::make_unique<FakeLink>(state);
  };
  auto peering = NcclPeering::Create({.attention_address = "a:1", .hidden_size = kHidden,
                                      .poll_interval = absl::Milliseconds(1)},
                                     std::move(deps));
  ASSERT_TRUE(peering.ok());
  (*peering)->Wrap(std::make_shared<FakeGrpcTransport>("e:1"));
  for (int i = 0; i < 2000 && !(*peering)->Peers().at(0).on_nccl; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE((*peering)->Peers().at(0).on_nccl);
}

// --- Expert side ------------------------------------------------------------------------------

struct ExpertSide {
  explicit ExpertSide(ExpertTransportKind kind, bool can_serve = true) {
    expert::NcclPairingHostOptions options;
    options.transport = kind;
    options.hidden_size = kHidden;
    options.max_peers = 2;
    options.idle_timeout = absl::Seconds(3);
    expert::NcclPairingHostDeps deps;
    deps.fetch_id = [this](const std::string& group, absl::Time) {
      return scheduler->Fetch(group, 0);
    };
    if (can_serve) {
      deps.start_serve = [this](const NcclPairSpec& spec, const CommunicatorId& id,
                                absl::Duration idle) {
        EXPECT_EQ(idle, absl::Seconds(3));
        absl::MutexLock lock(&mu);
        started.push_back(absl::StrCat(spec.attention_address, "@", id.generation));
        return absl::OkStatus();
      };
    }
    host = std::make_unique<expert::NcclPairingHost>(options, std::move(deps));
  }
  NcclPairSpec Spec(const std::string& attention, uint64_t generation) {
    NcclPairSpec spec;
    spec.group = NcclPairGroup(attention, "e:1");
    spec.generation = generation;
    spec.attention_address = attention;
    spec.expert_address = "e:1";
    spec.hidden_size = kHidden;
    spec.max_rows = 64;
    spec.heartbeat = absl::Seconds(1);
    return spec;
  }
  FakeScheduler* scheduler = nullptr;
  absl::Mutex mu;
  std::vector<std::string> started;
  std::unique_ptr<expert::NcclPairingHost> host;
};

TEST(NcclPairingHostTest, ChecksEveryFieldAndTheGeneration) {
  FakeScheduler scheduler;
  ExpertSide e(ExpertTransportKind::kNccl);
  e.scheduler = &scheduler;
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  NcclPairSpec spec = e.Spec("a:1", 1);
  spec.hidden_size = 5;
  EXPECT_THAT(e.host->Pair(spec, deadline).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hidden_size")));
  spec = e.Spec("a:1", 0);
  EXPECT_THAT(e.host->Pair(spec, deadline).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("generation")));
  spec = e.Spec("a:1", 1);
  spec.heartbeat = absl::Seconds(2);  // 3 heartbeats would exceed the 3 s idle timeout
  EXPECT_THAT(e.host->Pair(spec, deadline).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("heartbeat_seconds")));
  spec = e.Spec("a:1", 1);
  spec.group = "";
  EXPECT_THAT(e.host->Pair(spec, deadline).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("group")));
  // Generation 2 before the scheduler made it: ABORTED (fetch again).
  EXPECT_THAT(e.host->Pair(e.Spec("a:1", 2), deadline).status(),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("generation")));
  auto answer = e.host->Pair(e.Spec("a:1", 1), deadline);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->generation, 1u);
  EXPECT_EQ(answer->expert_rank, 1);
  EXPECT_EQ(answer->num_ranks, 2);
  DMOE_ASSERT_OK(e.host->Pair(e.Spec("b:1", 1), deadline).status());
  EXPECT_THAT(e.host->Pair(e.Spec("c:1", 1), deadline).status(),
              StatusIs(absl::StatusCode::kResourceExhausted));
  DMOE_ASSERT_OK(e.host->Pair(e.Spec("a:1", 1), deadline).status());  // re-pair: not a new peer
  absl::MutexLock lock(&e.mu);
  EXPECT_THAT(e.started, ::testing::ElementsAre("a:1@1", "b:1@1", "a:1@1"));
}

TEST(NcclPairingHostTest, GrpcPodsAndPodsWithoutAServeLoopRefuse) {
  FakeScheduler scheduler;
  ExpertSide grpc_only(ExpertTransportKind::kGrpc);
  grpc_only.scheduler = &scheduler;
  EXPECT_THAT(grpc_only.host->Pair(grpc_only.Spec("a:1", 1), absl::Now() + absl::Seconds(1)).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--expert-transport grpc")));
  ExpertSide no_loop(ExpertTransportKind::kNccl, /*can_serve=*/false);
  no_loop.scheduler = &scheduler;
  EXPECT_THAT(no_loop.host->Pair(no_loop.Spec("a:1", 1), absl::Now() + absl::Seconds(1)).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--device cuda")));
}

// The handshake over real gRPC: attention-side NcclPeering with PairOverGrpc against an
// NcclPairingService, both sides taking ids from one scheduler.
TEST(NcclPairingServiceTest, HandshakeOverGrpcPairsAndRebuilds) {
  FakeScheduler scheduler;
  ExpertSide e(ExpertTransportKind::kNccl);
  e.scheduler = &scheduler;
  expert::NcclPairingService service(*e.host);
  cluster::GrpcServerOptions server_options;
  server_options.listen = "127.0.0.1:0";
  server_options.services = {&service};
  auto server = cluster::StartGrpcServer(server_options);
  ASSERT_TRUE(server.ok()) << server.status();

  NcclPeeringDeps deps;
  deps.fetch_id = [&](const std::string& g, uint64_t f, absl::Time) { return scheduler.Fetch(g, f); };
  deps.pair = PairOverGrpc;
  std::vector<std::shared_ptr<FakeLinkState>> links;
  deps.connect = [&](const NcclPairSpec&, const CommunicatorId&, const NcclPairAnswer& a,
                     const ShardInfo&) -> absl::StatusOr<NcclLinkPtr> {
    EXPECT_EQ(a.idle_timeout, absl::Seconds(3));
    links.push_back(std::make_shared<FakeLinkState>());
    return std::make_unique<FakeLink>(links.back());
  };
  auto peering = NcclPeering::Create({.attention_address = "attn:7",
                                      .hidden_size = kHidden,
                                      .heartbeat = absl::Seconds(1),
                                      .min_backoff = absl::Milliseconds(1),
                                      .max_backoff = absl::Milliseconds(1),
                                      .poll_interval = absl::ZeroDuration()},
                                     std::move(deps));
  ASSERT_TRUE(peering.ok());
  (*peering)->Wrap(std::make_shared<FakeGrpcTransport>(server->address));
  (*peering)->PollOnce();
  ASSERT_TRUE((*peering)->Peers().at(0).on_nccl) << (*peering)->Peers().at(0).last_error;
  links.back()->broken = true;
  absl::SleepFor(absl::Milliseconds(1100));
  (*peering)->PollOnce();  // the heartbeat fails: dropped
  EXPECT_FALSE((*peering)->Peers().at(0).on_nccl);
  absl::SleepFor(absl::Milliseconds(2));
  (*peering)->PollOnce();  // re-paired with generation 2, which the expert checked too
  ASSERT_TRUE((*peering)->Peers().at(0).on_nccl) << (*peering)->Peers().at(0).last_error;
  EXPECT_EQ((*peering)->Peers().at(0).generation, 2u);
  EXPECT_EQ(e.host->peers().at("attn:7"), 2u);

  // A gRPC-only pod refuses over the wire with FAILED_PRECONDITION.
  FakeScheduler other;
  ExpertSide grpc_only(ExpertTransportKind::kGrpc);
  grpc_only.scheduler = &other;
  expert::NcclPairingService refusing(*grpc_only.host);
  server_options.services = {&refusing};
  auto server2 = cluster::StartGrpcServer(server_options);
  ASSERT_TRUE(server2.ok());
  NcclPairSpec spec = grpc_only.Spec("attn:7", 1);
  spec.expert_address = server2->address;
  EXPECT_THAT(PairOverGrpc(spec, absl::Now() + absl::Seconds(5)).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr(server2->address), HasSubstr("gRPC only"))));
  server->server->Shutdown();
  server2->server->Shutdown();
}

}  // namespace
}  // namespace dmoe::transport
