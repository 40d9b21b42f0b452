#include "router/embedded_server.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "expert_service/shard_info.h"
#include "grpcpp/server_builder.h"
#include "metrics/grpc_metrics.h"

namespace dmoe::router {
namespace {

std::string DirName(const std::string& dir) {
  std::filesystem::path p(dir);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "a/b/" -> "a/b"
  std::string name = p.filename().string();
  return name.empty() ? "model" : name;
}

}  // namespace

absl::Status EmbeddedServerOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("model_dir is empty");
  if (listen.empty() || listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen must be host:port, got '", listen, "'"));
  }
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be 'cpu' or 'cuda', got '", device, "'"));
  }
  if (compute == ComputeMode::kCluster && device != "cpu") {
    return absl::InvalidArgumentError(
        "--device cuda applies to in-process serving; a cluster scheduler computes nothing "
        "(start the attention replicas on the GPUs instead)");
  }
  return scheduler.Validate();
}

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(
    const EmbeddedServerOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto s = std::unique_ptr<EmbeddedServer>(new EmbeddedServer());
  s->metrics_ = options.metrics;
  if (!s->metrics_.registry && !options.metrics_listen.empty()) {
    s->metrics_ = metrics::NewProcessMetrics(
        options.compute == ComputeMode::kCluster ? "scheduler" : "serve", options.model_version);
  }
  if (!options.metrics_listen.empty()) {
    DMOE_ASSIGN_OR_RETURN(s->endpoint_, metrics::MetricsEndpoint::Start(options.metrics_listen,
                                                                        s->metrics_.registry));
  }
  scheduler::StepExecutor* executor = nullptr;
  if (options.compute == ComputeMode::kInProcess) {
    DMOE_ASSIGN_OR_RETURN(s->model_, scheduler::InProcessModel::Create(
                                         {.model_dir = options.model_dir,
                                          .kernels = options.kernels,
                                          .num_threads = options.num_threads,
                                          .kv_page_tokens = options.kv_page_tokens,
                                          .kv_max_pages = options.kv_pages,
                                          .device = options.device}));
    executor = &s->model_->step_executor();
  } else {
    DMOE_ASSIGN_OR_RETURN(model::ModelConfig cluster_config,
                          model::LoadModelConfig(options.model_dir));
    s->cluster_config_ = std::make_unique<model::ModelConfig>(std::move(cluster_config));
    DMOE_ASSIGN_OR_RETURN(std::string fingerprint,
                          expert::ConfigFingerprintOfDir(options.model_dir));
    s->membership_ = std::make_unique<scheduler::Membership>(
        scheduler::MembershipOptions{.num_experts = s->cluster_config_->num_experts,
                                     .heartbeat_period = options.heartbeat_period,
                                     .lease = options.lease});
    s->cluster_service_ =
        std::make_unique<scheduler::ClusterServer>(*s->membership_, fingerprint);
    if (s->metrics_.registry) {
      s->cluster_metrics_ =
          std::make_unique<scheduler::ClusterMetrics>(s->metrics_, *s->membership_);
    }
    s->remote_ = std::make_unique<scheduler::RemoteAttentionExecutor>(
        scheduler::RemoteAttentionExecutorOptions{.default_kv_pages = options.kv_pages},
        *s->membership_);
    executor = s->remote_.get();
  }
  const model::ModelConfig& config = s->model_ ? s->model_->config() : *s->cluster_config_;

  GenerationServerOptions service_options{
      .model_name = options.model_name.empty() ? DirName(options.model_dir) : options.model_name,
      .model_version = options.model_version};
  if (std::filesystem::exists(std::filesystem::path(options.model_dir) / "tokenizer.json")) {
    DMOE_ASSIGN_OR_RETURN(s->tokenizer_, model::Tokenizer::Load(options.model_dir));
    absl::StatusOr<model::DecodeTokenIds> ids =
        model::ResolveDecodeTokenIds(*s->tokenizer_, options.mask_id, options.stop_ids);
    if (ids.ok()) {
      service_options.mask_id = ids->mask_id;
      service_options.stop_ids = ids->stop_ids;
    } else if (config.kind == model::ModelKind::kAutoregressive) {
      // An autoregressive model needs no mask token.
      DMOE_LOG(WARNING) << "decode token ids: " << ids.status();
      service_options.stop_ids = options.stop_ids.value_or(std::vector<int32_t>{});
    } else {
      return ids.status();
    }
  } else {
    service_options.mask_id = options.mask_id.value_or(-1);
    service_options.stop_ids = options.stop_ids.value_or(std::vector<int32_t>{});
    if (config.kind == model::ModelKind::kBlockDiffusion && service_options.mask_id < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.model_dir,
          " has no tokenizer.json: give the mask token id (--mask-id) and the stop ids "
          "(--stop-ids)"));
    }
  }
  s->model_name_ = service_options.model_name;

  scheduler::SchedulerOptions scheduler_options = options.scheduler;
  scheduler_options.start_step_thread = true;
  scheduler_options.kv_page_tokens = options.kv_page_tokens;
  if (s->metrics_.registry) {
    s->scheduler_metrics_ = std::make_unique<scheduler::SchedulerMetrics>(s->metrics_);
    scheduler_options.metrics = s->scheduler_metrics_.get();
  }
  DMOE_ASSIGN_OR_RETURN(s->scheduler_,
                        scheduler::Scheduler::Create(scheduler_options, config, *executor));
  DMOE_ASSIGN_OR_RETURN(s->service_, GenerationServer::Create(service_options, *s->scheduler_,
                                                              config, s->tokenizer_.get()));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Without this Linux lets a second server bind the same port and steal half the calls.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  if (s->cluster_service_) builder.RegisterService(s->cluster_service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  metrics::AddGrpcServerMetrics(builder, s->metrics_);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  if (grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
    health->SetServingStatus(dmoe::v1::Generation::service_full_name(), true);
  }
  s->address_ =
      absl::StrCat(options.listen.substr(0, options.listen.rfind(':')), ":", s->port_);
  DMOE_LOG(INFO) << "serving model '" << s->model_name_ << "' (" << config.model_type
                 << ") on " << s->address_ << ": kv_pages " << options.kv_pages << " x "
                 << options.kv_page_tokens << " tokens, max_batch_tokens "
                 << scheduler_options.max_batch_tokens << ", max_queue "
                 << scheduler_options.max_queue << ", mask_id " << service_options.mask_id
                 << ", tokenizer " << (s->tokenizer_ ? "yes" : "no")
                 << (s->endpoint_ ? ", metrics on http://" + s->endpoint_->address() + "/metrics"
                                  : std::string());
  return s;
}

std::shared_ptr<grpc::Channel> EmbeddedServer::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

EmbeddedServer::~EmbeddedServer() { Drain(absl::ZeroDuration()); }

void EmbeddedServer::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&drain_mu_);
  if (drained_) return;
  drained_ = true;
  if (server_) {
    // Every service NOT_SERVING, and no later change (what a readiness probe watches).
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->Shutdown();
    }
  }
  if (service_) service_->StartDrain();
  if (scheduler_) {
    scheduler_->StartDrain();
    if (!scheduler_->WaitUntilIdle(timeout)) {
      const scheduler::SchedulerStats stats = scheduler_->Stats();
      if (stats.running + stats.waiting > 0) {
        DMOE_LOG(WARNING) << "drain: " << stats.running << " running and " << stats.waiting
                          << " queued requests after " << timeout << " end with UNAVAILABLE";
      }
    }
    scheduler_->Stop();  // finishes every remaining call's reactor
  }
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace dmoe::router
