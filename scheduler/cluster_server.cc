#include "scheduler/cluster_server.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cluster/placement_proto.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace dmoe::scheduler {

grpc::ServerUnaryReactor* ClusterServer::Register(grpc::CallbackServerContext* context,
                                                  const dmoe::v1::RegisterRequest* request,
                                                  dmoe::v1::RegisterResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!fingerprint_.empty() && request->config_fingerprint() != fingerprint_) {
    reactor->Finish(ToGrpcStatus(absl::FailedPreconditionError(absl::StrCat(
        "config_fingerprint ", request->config_fingerprint(), " of ", request->address(),
        " differs from the scheduler's model ", fingerprint_))));
    return reactor;
  }
  PodInfo pod;
  switch (request->role()) {
    case dmoe::v1::POD_ROLE_ATTENTION: pod.role = PodRole::kAttention; break;
    case dmoe::v1::POD_ROLE_EXPERT: pod.role = PodRole::kExpert; break;
    default:
      reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("role must be ATTENTION or EXPERT")));
      return reactor;
  }
  pod.address = request->address();
  pod.expert_first = request->expert_first();
  pod.expert_last = request->expert_last();
  auto id = membership_.Register(pod);
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  response->set_member_id(*id);
  response->set_heartbeat_period_seconds(
      absl::ToDoubleSeconds(membership_.options().heartbeat_period));
  response->set_placement_version(membership_.placement_version());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ClusterServer::Heartbeat(grpc::CallbackServerContext* context,
                                                   const dmoe::v1::HeartbeatRequest* request,
                                                   dmoe::v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status = membership_.Heartbeat(
      request->member_id(), request->busy_seconds(), request->applied_placement_version(),
      std::vector<int64_t>(request->expert_tokens().begin(), request->expert_tokens().end()));
  if (status.ok()) response->set_placement_version(membership_.placement_version());
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* ClusterServer::GetPlacement(grpc::CallbackServerContext* context,
                                                      const dmoe::v1::GetPlacementRequest*,
                                                      dmoe::v1::Placement* response) {
  cluster::PlacementToProto(membership_.CurrentPlacement(), response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ClusterServer::Leave(grpc::CallbackServerContext* context,
                                               const dmoe::v1::LeaveRequest* request,
                                               dmoe::v1::LeaveResponse* response) {
  membership_.Remove(request->member_id());
  DMOE_LOG(INFO) << "member " << request->member_id() << " left; placement v"
                 << membership_.placement_version();
  response->set_placement_version(membership_.placement_version());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ClusterServer::ListMembers(grpc::CallbackServerContext* context,
                                                     const dmoe::v1::ListMembersRequest*,
                                                     dmoe::v1::ListMembersResponse* response) {
  for (const MemberView& m : membership_.Members()) {
    dmoe::v1::Member* out = response->add_members();
    out->set_member_id(m.member_id);
    out->set_role(m.pod.role == PodRole::kExpert ? dmoe::v1::POD_ROLE_EXPERT
                                                 : dmoe::v1::POD_ROLE_ATTENTION);
    out->set_address(m.pod.address);
    out->set_expert_first(m.pod.expert_first);
    out->set_expert_last(m.pod.expert_last);
    out->set_seconds_since_heartbeat(absl::ToDoubleSeconds(m.since_heartbeat));
  }
  response->set_placement_version(membership_.placement_version());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ClusterServer::GetCommunicator(
    grpc::CallbackServerContext* context, const dmoe::v1::GetCommunicatorRequest* request,
    dmoe::v1::GetCommunicatorResponse* response) {
  absl::StatusOr<CommunicatorId> id =
      communicators_.Get(request->group(), request->failed_generation());
  if (id.ok()) {
    response->set_unique_id(id->unique_id);
    response->set_generation(id->generation);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(id.status()));
  return reactor;
}

}  // namespace dmoe::scheduler
