#include "expert_service/expert_server.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/dmoe/v1/expert.grpc.pb.h"
#include "proto/dmoe/v1/expert.pb.h"

namespace dmoe::expert {
namespace {

TensorView ToView(const v1::Tensor& tensor) {
  TensorView view;
  view.dtype = static_cast<WireDType>(tensor.dtype());
  view.shape.assign(tensor.shape().begin(), tensor.shape().end());
  view.data = tensor.data().data();
  view.size_bytes = tensor.data().size();
  return view;
}

// One RunExperts call in flight. The views point into `request_`, which gRPC keeps alive
// until the reactor's OnDone, i.e. after Finish: the engine finishes every work item, so no
// view outlives its call. The output is computed straight into the response's bytes.
class CallWork final : public ExpertWork {
 public:
  CallWork(grpc::CallbackServerContext* context, const v1::RunExpertsRequest* request,
           v1::RunExpertsResponse* response, grpc::ServerUnaryReactor* reactor)
      : context_(context), response_(response), reactor_(reactor) {
    request_.request_id = request->request_id();
    request_.step = request->step();
    request_.layer = request->layer();
    request_.placement_version = request->placement_version();
    request_.hidden = ToView(request->hidden());
    request_.expert_ids = ToView(request->expert_ids());
    deadline_ = absl::FromChrono(context->deadline());
  }

  const ExpertRequest& request() const override { return request_; }
  absl::Time deadline() const override { return deadline_; }
  bool cancelled() const override { return context_->IsCancelled(); }
  float* OutputBuffer(int64_t num_rows, int64_t hidden_size) override {
    v1::Tensor* out = response_->mutable_output();
    out->set_dtype(v1::DTYPE_F32);
    out->add_shape(num_rows);
    out->add_shape(hidden_size);
    std::string* data = out->mutable_data();
    data->resize(static_cast<size_t>(num_rows * hidden_size) * sizeof(float));
    return reinterpret_cast<float*>(data->data());
  }
  void Done(const absl::Status& status, double compute_seconds) override {
    if (status.ok()) {
      response_->set_placement_version(request_.placement_version);
      response_->set_compute_seconds(compute_seconds);
    }
    reactor_->Finish(ToGrpcStatus(status));
  }

 private:
  grpc::CallbackServerContext* context_;
  v1::RunExpertsResponse* response_;
  grpc::ServerUnaryReactor* reactor_;
  ExpertRequest request_;
  absl::Time deadline_;
};

}  // namespace

namespace internal {

// Counts the call as in flight from its reaction until gRPC has sent its final status.
class RunExpertsReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit RunExpertsReactor(std::atomic<int64_t>* in_flight) : in_flight_(in_flight) {
    in_flight_->fetch_add(1);
  }
  void OnDone() override {
    in_flight_->fetch_sub(1);
    delete this;
  }
  // Nothing to interrupt: the engine checks IsCancelled() before it computes.
  void OnCancel() override {}

 private:
  std::atomic<int64_t>* in_flight_;
};

// Reactions only convert, validate and enqueue: compute happens on the engine's workers,
// which call Finish (STYLE.md §7).
class ExpertServiceImpl final : public v1::ExpertService::CallbackService {
 public:
  explicit ExpertServiceImpl(ExpertEngine& engine) : engine_(engine) {}

  void StartDraining() { draining_ = true; }

  // Waits until no RunExperts call is in flight (true) or `deadline` passes (false).
  // Polls: reactions only touch an atomic counter, never a lock.
  bool WaitForIdle(absl::Time deadline) const {
    while (in_flight_.load() > 0) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return true;
  }
  int64_t in_flight() const { return in_flight_.load(); }

  grpc::ServerUnaryReactor* RunExperts(grpc::CallbackServerContext* context,
                                       const v1::RunExpertsRequest* request,
                                       v1::RunExpertsResponse* response) override {
    auto* reactor = new RunExpertsReactor(&in_flight_);  // deletes itself in OnDone
    if (draining_) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "expert shard is draining"));
      return reactor;
    }
    engine_.Submit(std::make_unique<CallWork>(context, request, response, reactor));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetShardInfo(grpc::CallbackServerContext* context,
                                         const v1::GetShardInfoRequest* /*request*/,
                                         v1::GetShardInfoResponse* response) override {
    const transport::ShardInfo& info = engine_.info();
    response->set_model_name(info.model_name);
    response->set_model_type(info.model_type);
    response->set_hidden_size(info.hidden_size);
    response->set_num_hidden_layers(info.num_hidden_layers);
    response->set_first_moe_layer(info.first_moe_layer);
    response->set_num_experts(info.num_experts);
    response->set_num_experts_per_tok(info.num_experts_per_tok);
    response->set_moe_intermediate_size(info.moe_intermediate_size);
    response->set_expert_first(info.expert_first);
    response->set_expert_last(info.expert_last);
    response->set_weight_dtype(info.weight_dtype);
    response->set_config_fingerprint(info.config_fingerprint);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  ExpertEngine& engine_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> in_flight_{0};
};

}  // namespace internal

absl::Status ExpertServerOptions::Validate() const {
  const size_t colon = listen_address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen_address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen_address: '", listen_address, "' is not host:port"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExpertServer>> ExpertServer::Create(
    const ExpertServerOptions& options, ExpertEngine& engine) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto server = std::unique_ptr<ExpertServer>(new ExpertServer());
  server->service_ = std::make_unique<internal::ExpertServiceImpl>(engine);
  std::vector<grpc::Service*> services = {server->service_.get()};
  services.insert(services.end(), options.extra_services.begin(), options.extra_services.end());
  DMOE_ASSIGN_OR_RETURN(server->server_,
                        cluster::StartGrpcServer({.listen = options.listen_address,
                                                  .services = std::move(services),
                                                  .health_services = {kExpertServiceName},
                                                  .metrics = options.metrics,
                                                  .credentials = options.credentials}));
  return server;
}

ExpertServer::~ExpertServer() { Shutdown(absl::Now()); }

std::shared_ptr<grpc::Channel> ExpertServer::InProcessChannel() { return server_.InProcessChannel(); }

void ExpertServer::Shutdown(absl::Time deadline) {
  std::call_once(shutdown_once_, [&] {
    service_->StartDraining();
    server_.MarkNotServing();
    // Drain ourselves, then shut gRPC down at once: gRPC's Shutdown(deadline) also waits for
    // idle client connections to close, which a client with no call in progress notices only
    // at its backup poll (~5 s). Calls still running at the deadline are cancelled.
    if (!service_->WaitForIdle(deadline)) {
      DMOE_LOG(WARNING) << "expert server on " << address() << ": " << service_->in_flight()
                        << " call(s) still running at the drain deadline; cancelling them";
    }
    server_.server->Shutdown(absl::ToChronoTime(absl::Now()));
    DMOE_LOG(INFO) << "expert server on " << address() << " stopped";
  });
}

}  // namespace dmoe::expert
