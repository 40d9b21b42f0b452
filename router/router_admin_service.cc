#include "router/router_admin_service.h"

#include <vector>

#include "common/auth/authorize.h"
#include "common/grpc_status.h"

namespace dmoe::router {

void ToProto(const SplitSnapshot& snapshot, const std::map<std::string, std::string>& backends,
             dmoe::v1::SplitStatus* out) {
  for (const VersionState& v : snapshot.versions) {
    dmoe::v1::VersionStatus* s = out->add_versions();
    s->set_version(v.version);
    auto it = backends.find(v.version);
    if (it != backends.end()) s->set_backend(it->second);
    s->set_percent(v.percent);
    s->set_stable(v.stable);
    s->set_window_requests(v.window.requests);
    s->set_window_errors(v.window.errors);
    s->set_window_error_ratio(v.window.error_ratio);
    s->set_window_p95_latency_seconds(absl::ToDoubleSeconds(v.window.p95_latency));
  }
  out->set_stable(snapshot.stable);
  dmoe::v1::RollbackPolicy* p = out->mutable_policy();
  p->set_window_seconds(absl::ToDoubleSeconds(snapshot.policy.window));
  p->set_min_requests(snapshot.policy.min_requests);
  p->set_max_error_ratio(snapshot.policy.max_error_ratio);
  p->set_max_latency_p95_seconds(absl::ToDoubleSeconds(snapshot.policy.max_latency_p95));
  out->set_rolled_back(snapshot.rolled_back);
  if (snapshot.last_rollback) {
    const RollbackEvent& e = *snapshot.last_rollback;
    dmoe::v1::RollbackEvent* r = out->mutable_last_rollback();
    r->set_version(e.version);
    r->set_bound(e.breach.bound);
    r->set_limit(e.breach.limit);
    r->set_measured(e.breach.measured);
    r->set_window_requests(e.breach.stats.requests);
    r->set_unix_seconds(absl::ToDoubleSeconds(e.at - absl::UnixEpoch()));
  }
  out->set_rollbacks(snapshot.rollbacks);
}

grpc::ServerUnaryReactor* RouterAdminService::SetSplit(grpc::CallbackServerContext* context,
                                                       const dmoe::v1::SetSplitRequest* request,
                                                       dmoe::v1::SetSplitResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status admitted = auth::Authorize(*context, api_keys_, auth::Role::kAdmin,
                                              auth::CallKind::kOther)
                                  .status();
      !admitted.ok()) {
    reactor->Finish(ToGrpcStatus(admitted));
    return reactor;
  }
  std::vector<VersionWeight> weights;
  for (const dmoe::v1::VersionWeight& w : request->weights()) {
    weights.push_back({.version = w.version(), .percent = w.percent()});
  }
  absl::Status status = split_.SetSplit(weights, request->stable());
  if (status.ok()) {
    SplitSnapshot snapshot = split_.Snapshot();
    if (metrics_ != nullptr) metrics_->PublishSplit(snapshot);
    ToProto(snapshot, backends_, response->mutable_status());
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* RouterAdminService::GetSplit(grpc::CallbackServerContext* context,
                                                       const dmoe::v1::GetSplitRequest* request,
                                                       dmoe::v1::GetSplitResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status admitted = auth::Authorize(*context, api_keys_, auth::Role::kAdmin,
                                              auth::CallKind::kOther)
                                  .status();
      !admitted.ok()) {
    reactor->Finish(ToGrpcStatus(admitted));
    return reactor;
  }
  ToProto(split_.Snapshot(), backends_, response->mutable_status());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace dmoe::router
