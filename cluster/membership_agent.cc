#include "cluster/membership_agent.h"

#include "absl/time/time.h"
#include "common/internal_credentials.h"
#include "common/logging.h"
#include "grpcpp/grpcpp.h"
#include "cluster/placement_proto.h"
#include "proto/dmoe/v1/cluster.grpc.pb.h"

namespace dmoe::cluster {

MembershipAgent::MembershipAgent(MembershipAgentOptions options)
    : options_(std::move(options)),
      stub_(dmoe::v1::Cluster::NewStub(
          CreateInternalChannel(options_.scheduler_address))),
      thread_([this] { Loop(); }) {}

MembershipAgent::~MembershipAgent() { Stop(); }

void MembershipAgent::Stop() {
  {
    absl::MutexLock lock(&mu_);  // unlocking wakes Loop's AwaitWithTimeout
    if (stop_) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (const uint64_t id = member_id_.exchange(0); id != 0) {
    // Leave now so the placement drops this pod before it stops serving (scale-in).
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    dmoe::v1::LeaveRequest request;
    request.set_member_id(id);
    dmoe::v1::LeaveResponse response;
    grpc::Status s = stub_->Leave(&context, request, &response);
    if (!s.ok()) DMOE_LOG(WARNING) << "leaving the scheduler failed: " << s.error_message();
  }
}

void MembershipAgent::Loop() {
  absl::Duration period = absl::Milliseconds(200);
  bool warned = false;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      // Sleeps one period, or less when Stop sets stop_ (then true).
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), period)) return;
    }
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    uint64_t version = 0;
    if (member_id_ == 0) {
      dmoe::v1::RegisterResponse response;
      grpc::Status s = stub_->Register(&context, options_.registration, &response);
      if (!s.ok()) {
        if (!warned) {
          DMOE_LOG(WARNING) << "registering with scheduler " << options_.scheduler_address
                            << " failed: " << s.error_message() << " (retrying)";
          warned = true;
        }
        continue;
      }
      member_id_ = response.member_id();
      period = absl::Seconds(response.heartbeat_period_seconds());
      version = response.placement_version();
      DMOE_LOG(INFO) << "registered with scheduler " << options_.scheduler_address
                     << " as member " << member_id_;
      warned = false;
    } else {
      dmoe::v1::HeartbeatRequest request;
      request.set_member_id(member_id_);
      if (options_.busy_seconds) request.set_busy_seconds(options_.busy_seconds());
      if (options_.applied_version) {
        request.set_applied_placement_version(options_.applied_version());
      }
      if (options_.expert_tokens) {
        std::vector<int64_t> tokens = options_.expert_tokens();
        request.mutable_expert_tokens()->Add(tokens.begin(), tokens.end());
      }
      dmoe::v1::HeartbeatResponse response;
      grpc::Status s = stub_->Heartbeat(&context, request, &response);
      if (!s.ok()) {
        if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
          DMOE_LOG(WARNING) << "lease lost; registering again";
          member_id_ = 0;
        }
        continue;
      }
      version = response.placement_version();
    }
    if (options_.on_placement && version != placement_version_) {
      grpc::ClientContext placement_context;
      placement_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      dmoe::v1::Placement placement;
      if (stub_->GetPlacement(&placement_context, {}, &placement).ok()) {
        placement_version_ = placement.version();
        options_.on_placement(PlacementFromProto(placement));
      }
    }
  }
}

}  // namespace dmoe::cluster
