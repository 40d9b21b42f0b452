#include "metrics/catalog.h"

#include "common/logging.h"

namespace dmoe::metrics {
namespace {

using T = MetricType;

// Latency buckets from 1 ms to 2 min: CPU steps take tens of ms, long generations minutes.
const std::vector<double> kLatency = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5,   1,      2.5,   5,    10,    20,    40,  80, 120};
const std::vector<double> kFastLatency = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
const std::vector<double> kTokensPerForward = {1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 12, 16, 32};
const std::vector<double> kStepsPerBlock = {1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64};
const std::vector<double> kCounts = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                     8192};

std::vector<MetricSpec> MakeCatalog() {
  return {
      // Scheduler (dmoe-scheduler, dmoe serve): requests.
      {"dmoe_num_requests_running", T::kGauge, "scheduler",
       "Requests admitted and not finished (they hold KV pages).", {}, {}},
      {"dmoe_num_requests_waiting", T::kGauge, "scheduler",
       "Requests queued for admission (waiting for KV capacity or an attention replica).", {}, {}},
      {"dmoe_requests_finished_total", T::kCounter, "scheduler",
       "Requests that ended, by finished_reason: stop, length, cancelled, deadline, error.",
       {"finished_reason"}, {}},
      {"dmoe_requests_rejected_total", T::kCounter, "scheduler",
       "Requests refused at submission, by grpc_code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, "
       "UNAVAILABLE).",
       {"grpc_code"}, {}},
      {"dmoe_time_to_first_block_seconds", T::kHistogram, "scheduler",
       "Submission to the first committed block (time to first token for block diffusion).", {},
       kLatency},
      {"dmoe_inter_block_latency_seconds", T::kHistogram, "scheduler",
       "Time between consecutive committed blocks of one request.", {}, kLatency},
      {"dmoe_e2e_request_latency_seconds", T::kHistogram, "scheduler",
       "Submission to the end of a request that finished normally.", {}, kLatency},
      {"dmoe_request_queue_time_seconds", T::kHistogram, "scheduler",
       "Submission to admission.", {}, kLatency},
      {"dmoe_prompt_tokens_total", T::kCounter, "scheduler",
       "Prompt tokens of admitted requests.", {}, {}},
      {"dmoe_generation_tokens_total", T::kCounter, "scheduler",
       "Generated (committed) tokens.", {}, {}},
      {"dmoe_forwards_total", T::kCounter, "scheduler",
       "Per-request forwards (one denoising step or one prefill of one request).", {}, {}},
      {"dmoe_tokens_edited_total", T::kCounter, "scheduler",
       "Token edits (LLaDA2.1 T2T rewrites of decoded tokens, re-masks included) of finished requests.",
       {}, {}},
      {"dmoe_tokens_remasked_total", T::kCounter, "scheduler",
       "Token edits that turned a decoded token back into the mask, of finished requests.", {},
       {}},
      {"dmoe_tokens_per_forward", T::kHistogram, "scheduler",
       "Generated tokens / forwards of each finished request (TPF).", {}, kTokensPerForward},
      {"dmoe_denoise_steps_per_block", T::kHistogram, "scheduler",
       "Forwards spent denoising one block until every position committed.", {}, kStepsPerBlock},
      // Scheduler: iterations (batched steps).
      {"dmoe_iterations_total", T::kCounter, "scheduler",
       "Batched steps the scheduler ran (one forward over every scheduled sequence).", {}, {}},
      {"dmoe_iteration_sequences", T::kHistogram, "scheduler",
       "Sequences batched in one step.", {}, kCounts},
      {"dmoe_iteration_tokens", T::kHistogram, "scheduler",
       "Tokens batched in one step (blocks being denoised plus prefills).", {}, kCounts},
      {"dmoe_iteration_duration_seconds", T::kHistogram, "scheduler",
       "Wall time of one batched forward, experts included.", {}, kLatency},
      {"dmoe_kv_cache_pages_used", T::kGauge, "scheduler",
       "KV pages reserved by admitted requests.", {}, {}},
      {"dmoe_kv_cache_pages_capacity", T::kGauge, "scheduler",
       "KV pages of every serving attention replica together.", {}, {}},
      {"dmoe_kv_cache_usage_perc", T::kGauge, "scheduler",
       "Fraction of KV pages reserved, in [0, 1] (vLLM kv_cache_usage_perc).", {}, {}},
      // Scheduler: the journal (--journal; these series exist only with one).
      {"dmoe_journal_records_total", T::kCounter, "scheduler",
       "Records appended to the scheduler journal, by type: accept, commit, end.", {"type"}, {}},
      {"dmoe_journal_bytes_total", T::kCounter, "scheduler",
       "Bytes appended to the journal, framing included (compaction rewrites not counted).", {},
       {}},
      {"dmoe_journal_fsync_seconds", T::kHistogram, "scheduler",
       "One fdatasync of the journal (per record with --journal-fsync always, per interval with "
       "interval).",
       {}, kFastLatency},
      {"dmoe_requests_resumed_total", T::kCounter, "scheduler",
       "Unfinished requests resumed from the journal when the scheduler started.", {}, {}},
      {"dmoe_requests_reattached_total", T::kCounter, "scheduler",
       "Generate / GenerateStream calls that re-attached to a running, resumed or recently "
       "finished request by its request_id (a client's retry).",
       {}, {}},
      // Scheduler: membership, placement and expert autoscaling.
      {"dmoe_cluster_members", T::kGauge, "scheduler",
       "Live registered pods, by role (attention, expert).", {"role"}, {}},
      {"dmoe_expert_placement_version", T::kGauge, "scheduler",
       "Version of the expert placement pushed to attention replicas.", {}, {}},
      {"dmoe_expert_placement_changes_total", T::kCounter, "scheduler",
       "Placement versions published (pods joining or leaving).", {}, {}},
      {"dmoe_expert_shard_replicas", T::kGauge, "scheduler",
       "Live replicas of each expert shard (shard = \"first-last\" expert range).", {"shard"},
       {}},
      {"dmoe_expert_shard_busy_ratio", T::kGauge, "scheduler",
       "Mean fraction of time a shard's replicas spent computing experts, over the last "
       "heartbeats.",
       {"shard"}, {}},
      {"dmoe_expert_shard_desired_replicas", T::kGauge, "scheduler",
       "Replicas each shard needs to run at the target busy ratio (the HPA's metric).",
       {"shard"}, {}},
      // Scheduler: expert load balancing (docs/expert-balancing.md).
      {"dmoe_expert_shard_load", T::kGauge, "scheduler",
       "Share of the routed tokens of the load window each expert shard computes under the "
       "active expert map, in [0, 1].",
       {"shard"}, {}},
      {"dmoe_expert_placement_imbalance_ratio", T::kGauge, "scheduler",
       "Max over mean shard load over the load window, summed over MoE layers (1 is even), "
       "for the active expert map and for the plain range placement.",
       {"map"}, {}},
      {"dmoe_expert_rebalances_total", T::kCounter, "scheduler",
       "Expert maps staged by the balancer.", {}, {}},
      {"dmoe_expert_moves_total", T::kCounter, "scheduler",
       "Experts loaded on a shard by rebalances (per layer).", {}, {}},
      {"dmoe_expert_redundant_experts", T::kGauge, "scheduler",
       "Redundant slots in use: experts computed outside their home shard, over all layers.",
       {}, {}},
      // Attention replicas (dmoe-attention; dmoe serve in process): routing and dispatch.
      {"dmoe_expert_tokens_total", T::kCounter, "attention",
       "Tokens routed to each expert of each MoE layer.", {"layer", "expert"}, {}},
      {"dmoe_expert_imbalance_ratio", T::kGauge, "attention",
       "Max over mean of the tokens routed per expert of a layer in the last step (1 is even).",
       {"layer"}, {}},
      {"dmoe_expert_dispatch_seconds", T::kHistogram, "attention",
       "One layer's dispatch to one shard until its outputs are back (pack, send, compute, "
       "receive).",
       {"shard"}, kFastLatency},
      {"dmoe_expert_combine_seconds", T::kHistogram, "attention",
       "Weighted combine of one layer's expert outputs into the hidden states.", {},
       kFastLatency},
      {"dmoe_expert_transport_peers", T::kGauge, "attention",
       "Expert pods this replica sends rows to, by transport: nccl (a link is up) or grpc "
       "(--expert-transport grpc, or nccl while unpaired or after a failure).",
       {"transport"}, {}},
      {"dmoe_expert_transport_fallbacks_total", T::kCounter, "attention",
       "--expert-transport nccl: times an expert pod stayed on or fell back to gRPC, by reason: "
       "refused, pairing_failed, link_failed, heartbeat_failed.",
       {"reason"}, {}},
      {"dmoe_attention_step_seconds", T::kHistogram, "attention",
       "One Step call on an attention replica (attention, dense layers and expert dispatch).",
       {}, kLatency},
      {"dmoe_attention_sequences", T::kGauge, "attention",
       "Sequences whose KV cache this replica holds.", {}, {}},
      {"dmoe_attention_positions_total", T::kCounter, "attention",
       "Positions (token slots) computed by successful Step calls, prefill included.", {}, {}},
      {"dmoe_attention_busy_seconds_total", T::kCounter, "attention",
       "Seconds of successful Step calls spent on this replica's own work, summed over its "
       "micro-batches: each one's time minus its wait for expert shards (positions / busy "
       "seconds is one micro-batch's rate).",
       {}, {}},
      // Expert shards (dmoe-expert).
      {"dmoe_expert_rows_total", T::kCounter, "expert",
       "(token, expert) rows computed by this expert pod.", {}, {}},
      {"dmoe_expert_compute_seconds", T::kHistogram, "expert",
       "Compute time of one RunExperts call.", {}, kFastLatency},
      {"dmoe_expert_busy_seconds_total", T::kCounter, "expert",
       "Seconds spent computing experts (rate() is the busy ratio).", {}, {}},
      // Router (dmoe-router): the public front and canary rollout.
      {"dmoe_router_requests_total", T::kCounter, "router",
       "Generation calls the router forwarded, by grpc_code; model_version is the version "
       "that served.",
       {"grpc_code"}, {}},
      {"dmoe_router_request_duration_seconds", T::kHistogram, "router",
       "Duration of forwarded generation calls.", {}, kLatency},
      {"dmoe_canary_weight_percent", T::kGauge, "router",
       "Traffic share of each model version, in percent.", {}, {}},
      {"dmoe_canary_rollbacks_total", T::kCounter, "router",
       "Automatic rollbacks of a canary version to the stable one.", {}, {}},
      {"dmoe_router_reattaches_total", T::kCounter, "router",
       "Tries to re-attach a stream whose scheduler was lost (UNAVAILABLE) mid-stream.", {}, {}},
      {"dmoe_api_refusals_total", T::kCounter, "router",
       "Public API calls refused by API keys or tenant limits (also dmoe-scheduler and dmoe "
       "serve with --api-keys), by tenant (empty: no or unknown key) and reason: "
       "unauthenticated, permission_denied, rate, streams, tokens.",
       {"tenant", "reason"}, {}},
      // Every gRPC server.
      {"dmoe_grpc_server_handled_total", T::kCounter, "all",
       "RPCs completed by a server, by service, method and status code (grpc_code).",
       {"grpc_service", "grpc_method", "grpc_code"}, {}},
      {"dmoe_info", T::kGauge, "all", "1 for every dmoe process, with its role.", {"role"}, {}},
  };
}

template <typename Builder>
auto& Build(Builder builder, prometheus::Registry& registry, std::string_view name,
            MetricType type, const std::string& model_version) {
  const MetricSpec& spec = Spec(name);
  DMOE_CHECK(spec.type == type) << name << " is a " << TypeName(spec.type);
  return builder.Name(spec.name)
      .Help(spec.help)
      .Labels({{"model_version", model_version}})
      .Register(registry);
}

}  // namespace

const std::vector<MetricSpec>& Catalog() {
  static const std::vector<MetricSpec>* catalog = new std::vector<MetricSpec>(MakeCatalog());
  return *catalog;
}

const MetricSpec& Spec(std::string_view name) {
  for (const MetricSpec& spec : Catalog()) {
    if (spec.name == name) return spec;
  }
  DMOE_LOG(FATAL) << "metric " << name << " is not in metrics/catalog.cc";
  __builtin_unreachable();
}

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "unknown";
}

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       std::string_view name,
                                                       const std::string& model_version) {
  return Build(prometheus::BuildCounter(), registry, name, MetricType::kCounter, model_version);
}

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   std::string_view name,
                                                   const std::string& model_version) {
  return Build(prometheus::BuildGauge(), registry, name, MetricType::kGauge, model_version);
}

prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& registry,
                                                           std::string_view name,
                                                           const std::string& model_version) {
  return Build(prometheus::BuildHistogram(), registry, name, MetricType::kHistogram, model_version);
}

prometheus::Histogram& AddHistogram(prometheus::Family<prometheus::Histogram>& family,
                                    std::string_view name,
                                    const std::map<std::string, std::string>& labels) {
  return family.Add(labels, prometheus::Histogram::BucketBoundaries(Spec(name).buckets));
}

}  // namespace dmoe::metrics
