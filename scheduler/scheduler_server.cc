#include "scheduler/scheduler_server.h"

#include "common/status_macros.h"

namespace dmoe::scheduler {

absl::StatusOr<std::unique_ptr<SchedulerServer>> SchedulerServer::Start(
    const SchedulerServerOptions& options) {
  DMOE_RETURN_IF_ERROR(options.api.Validate());
  auto s = std::unique_ptr<SchedulerServer>(new SchedulerServer());
  DMOE_ASSIGN_OR_RETURN(s->metrics_,
                        metrics::ServeProcessMetrics("scheduler", options.api.model_version,
                                                     options.api.metrics_listen,
                                                     options.api.metrics));
  DMOE_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(options.api.model_dir));
  s->config_ = std::make_unique<model::ModelConfig>(std::move(config));
  DMOE_ASSIGN_OR_RETURN(std::string fingerprint,
                        model::ConfigFingerprintOfDir(options.api.model_dir));
  s->membership_ = std::make_unique<Membership>(MembershipOptions{
      .num_experts = s->config_->num_experts,
      .heartbeat_period = options.heartbeat_period,
      .lease = options.lease,
      .first_moe_layer = s->config_->first_k_dense_replace,
      .num_moe_layers = s->config_->num_hidden_layers - s->config_->first_k_dense_replace,
      .load_window = options.load_window});
  s->cluster_service_ = std::make_unique<ClusterServer>(*s->membership_, fingerprint);
  if (s->metrics_.metrics.registry) {
    s->cluster_metrics_ = std::make_unique<ClusterMetrics>(s->metrics_.metrics, *s->membership_);
  }
  if (options.expert_balancing) {
    DMOE_ASSIGN_OR_RETURN(s->rebalancer_,
                          ExpertRebalancer::Create(options.balancer, *s->membership_,
                                                   s->metrics_.metrics));
    s->rebalancer_->Start();
  }
  s->remote_ = std::make_unique<RemoteAttentionExecutor>(
      RemoteAttentionExecutorOptions{.step_timeout = options.step_timeout,
                                     .default_kv_pages = options.api.kv_pages},
      *s->membership_);
  DMOE_ASSIGN_OR_RETURN(s->api_, GenerationEndpoint::Start(options.api, s->metrics_.metrics,
                                                           *s->config_, *s->remote_,
                                                           {s->cluster_service_.get()}));
  return s;
}

}  // namespace dmoe::scheduler
