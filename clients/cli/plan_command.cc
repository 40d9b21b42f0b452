// `dmoe plan`: capacity planning (docs/capacity-planning.md). From a checkpoint's config.json,
// a measured per-expert load profile (dmoe_expert_tokens_total scraped from attention pods'
// /metrics, or saved to a file) and a target, the attention replicas, expert shards, replicas
// per shard and redundant expert slots to run; the redundant slots placed by the balancer's
// planner (scheduler/capacity_plan.h has the cost model).
#include <httplib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/status_macros.h"
#include "model/config.h"
#include "nlohmann/json.hpp"
#include "scheduler/capacity_plan.h"

namespace dmoe::cli {
namespace {

struct PlanFlags {
  std::string model;
  std::vector<std::string> load;           // files or http://host:port[/path]
  std::vector<std::string> shard_metrics;  // expert pods' metrics: measured rows/s
  std::vector<std::string> attention_metrics;  // attention pods': positions/s, row moves
  std::vector<std::string> scheduler_metrics;  // the scheduler's: its overhead per forward
  std::string bench_json;                  // dmoe bench --json: measured forwards per token
  double target_tokens_per_s = 0;
  double target_latency_ms = 0;
  double forwards_per_token = 0;           // 0: from --bench-json, else 1
  double gflops = 0;
  double attention_positions_per_s = 0;
  double shard_rows_per_s = 0;
  int64_t context_tokens = 256;
  double dispatch_ms = 0;
  double dispatch_us_per_row = -1;  // < 0: measured when both pods' metrics are given, else 0
  double step_overhead_ms = -1;     // < 0: measured from --scheduler-metrics, else 0
  double positions_per_token = 0;
  int64_t shared_cores = 0;
  int64_t micro_batches = 2;
  double utilization = 0.8;
  double expert_pod_memory_gib = 0;
  int64_t max_redundant_slots = 8;
  double imbalance_bound = 1.15;
  int64_t max_shards = 64;
  bool show_map = false;
  bool json = false;
  // --predict: the layout to predict instead of planning one.
  bool predict = false;
  int64_t attention_replicas = 1;
  int64_t expert_shards = 1;
  int64_t expert_replicas = 1;
  int64_t redundant_slots = 0;
};

// The text of a file, or of an HTTP GET of an http:// URL (path defaults to /metrics).
absl::StatusOr<std::string> ReadSource(const std::string& source) {
  if (absl::StartsWith(source, "http://")) {
    const std::string rest = source.substr(7);
    const size_t slash = rest.find('/');
    const std::string host = rest.substr(0, slash);
    const std::string path = slash == std::string::npos ? "/metrics" : rest.substr(slash);
    httplib::Client client(absl::StrCat("http://", host));
    client.set_connection_timeout(5);
    client.set_read_timeout(10);
    auto res = client.Get(path);
    if (!res) {
      return absl::UnavailableError(
          absl::StrCat("GET ", source, ": ", httplib::to_string(res.error())));
    }
    if (res->status != 200) {
      return absl::UnavailableError(absl::StrCat("GET ", source, ": HTTP ", res->status));
    }
    return res->body;
  }
  std::ifstream in(source, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", source));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::string> ReadAll(const std::vector<std::string>& sources) {
  std::string text;
  for (const std::string& s : sources) {
    DMOE_ASSIGN_OR_RETURN(std::string one, ReadSource(s));
    text += one;
    text += "\n";
  }
  return text;
}

std::string Bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    ++i;
  }
  return absl::StrFormat("%.3g %s", b, units[i]);
}

// The rates of the cost model, each with where it came from (for the report).
struct ResolvedRates {
  scheduler::CapacityRates rates;
  std::string forwards_source, attention_source, shard_source, dispatch_source, step_source;
};

absl::StatusOr<ResolvedRates> ResolveRates(const PlanFlags& f,
                                           const scheduler::TokenCosts& costs) {
  // Each metrics source is read once: every rate derived from it comes from one snapshot
  // (and a live pod is scraped once, not once per rate).
  std::string attention_text, shard_text, scheduler_text;
  if (!f.attention_metrics.empty()) {
    DMOE_ASSIGN_OR_RETURN(attention_text, ReadAll(f.attention_metrics));
  }
  if (!f.shard_metrics.empty()) {
    DMOE_ASSIGN_OR_RETURN(shard_text, ReadAll(f.shard_metrics));
  }
  if (!f.scheduler_metrics.empty()) {
    DMOE_ASSIGN_OR_RETURN(scheduler_text, ReadAll(f.scheduler_metrics));
  }

  ResolvedRates resolved;
  scheduler::CapacityRates& rates = resolved.rates;
  resolved.forwards_source = "--forwards-per-token";
  rates.forwards_per_token = f.forwards_per_token;
  if (rates.forwards_per_token <= 0 && !f.bench_json.empty()) {
    DMOE_ASSIGN_OR_RETURN(std::string text, ReadSource(f.bench_json));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("forwards") || !j["forwards"].is_number() ||
        !j.contains("generated_tokens") || !j["generated_tokens"].is_number() ||
        !(j["generated_tokens"].get<double>() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.bench_json, ": not a dmoe bench --json report with forwards and generated_tokens"));
    }
    rates.forwards_per_token = j["forwards"].get<double>() / j["generated_tokens"].get<double>();
    resolved.forwards_source = f.bench_json;
  }
  if (rates.forwards_per_token <= 0) {
    rates.forwards_per_token = 1;
    resolved.forwards_source = "default (one token per forward)";
  }
  resolved.attention_source = "--attention-positions-per-s";
  rates.attention_positions_per_s = f.attention_positions_per_s;
  if (rates.attention_positions_per_s <= 0 && !attention_text.empty()) {
    DMOE_ASSIGN_OR_RETURN(rates.attention_positions_per_s,
                          scheduler::MeasuredAttentionPositionsPerSecond(attention_text));
    resolved.attention_source =
        "measured: dmoe_attention_positions_total / dmoe_attention_busy_seconds_total";
  }
  if (rates.attention_positions_per_s <= 0 && f.gflops > 0) {
    rates.attention_positions_per_s = f.gflops * 1e9 / costs.attention_flops;
    resolved.attention_source = absl::StrFormat("--gflops %g", f.gflops);
  }
  resolved.shard_source = "--shard-rows-per-s";
  rates.shard_rows_per_s = f.shard_rows_per_s;
  if (rates.shard_rows_per_s <= 0 && !shard_text.empty()) {
    DMOE_ASSIGN_OR_RETURN(rates.shard_rows_per_s,
                          scheduler::MeasuredShardRowsPerSecond(shard_text));
    resolved.shard_source = "measured: dmoe_expert_rows_total / dmoe_expert_busy_seconds_total";
  }
  if (rates.shard_rows_per_s <= 0 && f.gflops > 0) {
    rates.shard_rows_per_s = f.gflops * 1e9 / costs.expert_row_flops;
    resolved.shard_source = absl::StrFormat("--gflops %g", f.gflops);
  }
  if (rates.attention_positions_per_s <= 0) {
    return absl::InvalidArgumentError(
        "give --attention-positions-per-s or --gflops (an attention replica's throughput)");
  }
  if (rates.shard_rows_per_s <= 0) {
    return absl::InvalidArgumentError(
        "give --shard-rows-per-s, --shard-metrics or --gflops (an expert pod's throughput)");
  }
  rates.dispatch_ms = f.dispatch_ms;
  rates.dispatch_us_per_row = std::max(0.0, f.dispatch_us_per_row);
  resolved.dispatch_source = f.dispatch_us_per_row >= 0 ? "--dispatch-us-per-row" : "default";
  if (f.dispatch_us_per_row < 0 && !attention_text.empty() && !shard_text.empty()) {
    DMOE_ASSIGN_OR_RETURN(rates.dispatch_us_per_row,
                          scheduler::MeasuredDispatchMicrosPerRow(attention_text, shard_text));
    resolved.dispatch_source = "measured: (dispatch round trips - expert compute) / rows";
  }
  rates.step_overhead_ms = std::max(0.0, f.step_overhead_ms);
  resolved.step_source = f.step_overhead_ms >= 0 ? "--step-overhead-ms" : "default";
  if (f.step_overhead_ms < 0 && !scheduler_text.empty() && !attention_text.empty()) {
    DMOE_ASSIGN_OR_RETURN(rates.step_overhead_ms,
                          scheduler::MeasuredStepOverheadMs(scheduler_text, attention_text));
    resolved.step_source = "measured: scheduler iteration - attention step";
  }
  rates.positions_per_token = f.positions_per_token;
  rates.shared_cores = f.shared_cores;
  rates.micro_batches = f.micro_batches;
  rates.utilization = f.utilization;
  rates.expert_pod_memory_bytes = f.expert_pod_memory_gib * (1 << 30);
  rates.max_redundant_slots = f.max_redundant_slots;
  rates.imbalance_bound = f.imbalance_bound;
  rates.max_shards = f.max_shards;
  DMOE_RETURN_IF_ERROR(rates.Validate());
  return resolved;
}

// --predict: the given layout's lone-request latency and capacity.
absl::Status RunPredict(const PlanFlags& f, const model::ModelConfig& config,
                        const scheduler::ExpertLoad& load, const ResolvedRates& resolved) {
  if (f.attention_replicas < 1 || f.expert_shards < 1 || f.expert_replicas < 1 ||
      f.redundant_slots < 0) {
    return absl::InvalidArgumentError(
        "--predict needs --attention-replicas, --expert-shards, --expert-replicas >= 1 and "
        "--redundant-slots >= 0");
  }
  if (f.expert_shards > config.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("--expert-shards ", f.expert_shards, " > ",
                                                   config.num_experts, " experts"));
  }
  const scheduler::CapacityRates& rates = resolved.rates;
  const double imbalance = scheduler::PlannedImbalance(
      load, config.num_experts, f.expert_shards, f.redundant_slots, rates.plan);
  const scheduler::CapacityPrediction p = scheduler::PredictCapacity(
      config, rates, f.attention_replicas, f.expert_shards, f.expert_replicas, imbalance);
  if (f.json) {
    nlohmann::json out = {{"attention_replicas", f.attention_replicas},
                          {"expert_shards", f.expert_shards},
                          {"expert_replicas", f.expert_replicas},
                          {"redundant_slots", f.redundant_slots},
                          {"imbalance", imbalance},
                          {"predicted_latency_ms", p.latency_ms},
                          {"predicted_stream_tokens_per_s", 1000 / p.latency_ms},
                          {"predicted_tokens_per_s", p.tokens_per_s},
                          {"forwards_per_token", rates.forwards_per_token},
                          {"positions_per_token", rates.positions_per_token},
                          {"attention_positions_per_s", rates.attention_positions_per_s},
                          {"shard_rows_per_s", rates.shard_rows_per_s},
                          {"dispatch_ms", rates.dispatch_ms},
                          {"dispatch_us_per_row", rates.dispatch_us_per_row},
                          {"step_overhead_ms", rates.step_overhead_ms},
                          {"shared_cores", rates.shared_cores},
                          {"micro_batches", rates.micro_batches}};
    std::cout << out.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::printf("layout      %lld attention replicas, %lld expert shards x %lld replicas, %lld "
              "redundant slots (imbalance %.3f)\n",
              (long long)f.attention_replicas, (long long)f.expert_shards,
              (long long)f.expert_replicas, (long long)f.redundant_slots, imbalance);
  std::printf("rates       attention %.4g positions/s (%s); expert pod %.4g rows/s (%s); "
              "moving a row %.3g us (%s); dispatch %.3g ms per layer; scheduler %.3g ms per "
              "forward (%s); %.3g forwards/token (%s)%s\n",
              rates.attention_positions_per_s, resolved.attention_source.c_str(),
              rates.shard_rows_per_s, resolved.shard_source.c_str(), rates.dispatch_us_per_row,
              resolved.dispatch_source.c_str(), rates.dispatch_ms, rates.step_overhead_ms,
              resolved.step_source.c_str(), rates.forwards_per_token,
              resolved.forwards_source.c_str(),
              rates.shared_cores > 0
                  ? absl::StrFormat("; %d shared cores", rates.shared_cores).c_str()
                  : "");
  std::printf("predicted   %.4g ms per generated token of a lone request (%.4g tokens/s per "
              "stream); %.4g tokens/s at full utilization\n",
              p.latency_ms, 1000 / p.latency_ms, p.tokens_per_s);
  return absl::OkStatus();
}

absl::Status RunPlan(const PlanFlags& f) {
  DMOE_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(f.model));
  const scheduler::TokenCosts costs = scheduler::ComputeTokenCosts(config, f.context_tokens);

  scheduler::ExpertLoad load;
  double routed = 0;
  if (!f.load.empty()) {
    DMOE_ASSIGN_OR_RETURN(std::string text, ReadAll(f.load));
    DMOE_ASSIGN_OR_RETURN(load, scheduler::ParseExpertLoadProfile(text, config));
    for (const auto& layer : load) {
      for (double v : layer) routed += v;
    }
  }
  DMOE_ASSIGN_OR_RETURN(ResolvedRates resolved, ResolveRates(f, costs));
  if (f.predict) return RunPredict(f, config, load, resolved);
  if (!(f.target_tokens_per_s > 0)) {
    return absl::InvalidArgumentError("--target-tokens-per-s is required (or --predict)");
  }
  const scheduler::CapacityRates& rates = resolved.rates;
  const std::string& forwards_source = resolved.forwards_source;
  const std::string& attention_source = resolved.attention_source;
  const std::string& shard_source = resolved.shard_source;
  scheduler::CapacityTarget target;
  target.tokens_per_s = f.target_tokens_per_s;
  target.latency_ms = f.target_latency_ms;
  DMOE_ASSIGN_OR_RETURN(scheduler::CapacityPlan plan,
                        scheduler::PlanCapacity(config, load, target, rates));

  // Redundant copies: experts computed by a shard other than (or besides) their home.
  std::vector<std::string> copies;
  int64_t redundant = 0;
  for (size_t l = 0; l < plan.map.size(); ++l) {
    for (size_t e = 0; e < plan.map[l].size(); ++e) {
      const std::vector<int32_t>& holders = plan.map[l][e];
      int32_t home = 0;
      for (size_t s = 0; s < plan.shards.size(); ++s) {
        if (static_cast<int64_t>(e) >= plan.shards[s].first) home = static_cast<int32_t>(s);
      }
      int64_t away = 0;
      for (int32_t h : holders) away += h != home ? 1 : 0;
      if (away == 0) continue;
      redundant += away;
      copies.push_back(absl::StrFormat("layer %d expert %d (home shard %d): shards %s",
                                       static_cast<int>(l + config.first_k_dense_replace),
                                       static_cast<int>(e), home, absl::StrJoin(holders, ",")));
    }
  }

  if (f.json) {
    nlohmann::json out = {
        {"attention_replicas", plan.attention_replicas},
        {"expert_shards", plan.expert_shards},
        {"expert_replicas", plan.expert_replicas},
        {"expert_pods", plan.expert_shards * plan.expert_replicas},
        {"redundant_slots", plan.redundant_slots},
        {"redundant_experts", redundant},
        {"range_imbalance", plan.range_imbalance},
        {"planned_imbalance", plan.planned_imbalance},
        {"positions_per_s", plan.positions_per_s},
        {"rows_per_s", plan.rows_per_s},
        {"hottest_shard_rows_per_s", plan.hottest_shard_rows_per_s},
        {"predicted_latency_ms", plan.latency_ms},
        {"predicted_tokens_per_s", plan.predicted_tokens_per_s},
        {"expert_pod_weight_bytes", plan.expert_pod_weight_bytes},
        {"meets_latency", plan.meets_latency},
        {"fits_memory", plan.fits_memory},
        {"forwards_per_token", rates.forwards_per_token},
        {"attention_positions_per_s", rates.attention_positions_per_s},
        {"shard_rows_per_s", rates.shard_rows_per_s},
        {"attention_flops_per_position", costs.attention_flops},
        {"expert_row_flops", costs.expert_row_flops},
        {"rows_per_position", costs.rows_per_position},
        {"routed_tokens", routed},
        {"notes", plan.notes}};
    if (f.show_map) out["redundant_copies"] = copies;
    std::cout << out.dump(2) << "\n";
    return absl::OkStatus();
  }
  const int64_t moe_layers = config.num_hidden_layers - config.first_k_dense_replace;
  std::printf("model            %s: %lld layers (%lld MoE), %lld experts top-%lld, hidden %lld, "
              "block %lld\n",
              f.model.c_str(), (long long)config.num_hidden_layers, (long long)moe_layers,
              (long long)config.num_experts, (long long)config.num_experts_per_tok,
              (long long)config.hidden_size, (long long)config.block_length);
  std::printf("cost model       attention %.4g MFLOP/position (context %lld); expert row %.4g "
              "MFLOP; %.0f rows/position; %s per expert and layer; %s on the wire per row\n",
              costs.attention_flops / 1e6, (long long)f.context_tokens,
              costs.expert_row_flops / 1e6, costs.rows_per_position,
              Bytes(costs.expert_weight_bytes).c_str(), Bytes(costs.row_wire_bytes).c_str());
  std::printf("rates            attention replica %.4g positions/s (%s); expert pod %.4g rows/s "
              "(%s); %.3g forwards/token (%s); dispatch %.3g ms/layer; utilization %.2f\n",
              rates.attention_positions_per_s, attention_source.c_str(), rates.shard_rows_per_s,
              shard_source.c_str(), rates.forwards_per_token, forwards_source.c_str(),
              rates.dispatch_ms, rates.utilization);
  if (load.empty()) {
    std::printf("load profile     none: uniform routing assumed\n");
  } else {
    std::printf("load profile     %.0f routed tokens from %zu source(s)\n", routed, f.load.size());
  }
  std::printf("target           %.4g tokens/s", f.target_tokens_per_s);
  if (f.target_latency_ms > 0) std::printf(", %.4g ms per generated token", f.target_latency_ms);
  std::printf("\n\nrecommendation\n");
  std::printf("  attention replicas  %lld  (%.4g positions/s)\n", (long long)plan.attention_replicas,
              plan.positions_per_s);
  std::vector<std::string> ranges;
  for (const auto& [first, last] : plan.shards) ranges.push_back(absl::StrCat(first, ":", last));
  std::printf("  expert shards       %lld  (--experts %s)\n", (long long)plan.expert_shards,
              absl::StrJoin(ranges, " ").c_str());
  std::printf("  expert replicas     %lld per shard, %lld expert pods (hottest shard %.4g rows/s of "
              "%.4g)\n",
              (long long)plan.expert_replicas, (long long)(plan.expert_shards * plan.expert_replicas),
              plan.hottest_shard_rows_per_s, plan.rows_per_s);
  std::printf("  redundant slots     %lld per shard and MoE layer (dmoe-scheduler --expert-balancing "
              "--redundant-slots %lld); %lld expert copies outside their range\n",
              (long long)plan.redundant_slots, (long long)plan.redundant_slots, (long long)redundant);
  std::printf("  imbalance           %.3f on the range map -> %.3f planned\n", plan.range_imbalance,
              plan.planned_imbalance);
  std::printf("  predicted           %.4g ms per generated token (lone request); %.4g tokens/s at "
              "full utilization\n",
              plan.latency_ms, plan.predicted_tokens_per_s);
  std::printf("  expert pod weights  %s (routed experts: range + redundant slots)\n",
              Bytes(plan.expert_pod_weight_bytes).c_str());
  for (const std::string& note : plan.notes) std::printf("note: %s\n", note.c_str());
  if (f.show_map) {
    std::printf("\nredundant copies\n");
    for (const std::string& c : copies) std::printf("  %s\n", c.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterPlanCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<PlanFlags>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Capacity planner: attention replicas, expert shards, replicas and redundant slots "
              "for a target, from a measured expert load profile");
  cmd->add_option("--model", f->model, "Checkpoint directory (its config.json)")->required();
  cmd->add_option("--load", f->load,
                  "dmoe_expert_tokens_total source: a file in Prometheus text format or an "
                  "attention pod's http://HOST:PORT[/metrics] (repeat to sum); none: uniform");
  cmd->add_option("--target-tokens-per-s", f->target_tokens_per_s,
                  "Generated tokens per second, the whole cluster (required unless --predict)");
  cmd->add_option("--target-latency-ms", f->target_latency_ms,
                  "Time per generated token of a request (request latency / tokens); 0: none")
      ->capture_default_str();
  cmd->add_option("--forwards-per-token", f->forwards_per_token,
                  "Forwards per generated token (1 / TPF); default from --bench-json, else 1");
  cmd->add_option("--bench-json", f->bench_json,
                  "A dmoe bench --json report: forwards per token = forwards / generated_tokens");
  cmd->add_option("--gflops", f->gflops,
                  "Sustained GFLOP/s of one pod: derives the rates not given");
  cmd->add_option("--attention-positions-per-s", f->attention_positions_per_s,
                  "Positions per second one attention replica computes");
  cmd->add_option("--shard-rows-per-s", f->shard_rows_per_s,
                  "(token, expert) rows per second one expert pod computes");
  cmd->add_option("--shard-metrics", f->shard_metrics,
                  "Expert pods' metrics (file or http://HOST:PORT): measured rows/s = "
                  "dmoe_expert_rows_total / dmoe_expert_busy_seconds_total");
  cmd->add_option("--attention-metrics", f->attention_metrics,
                  "Attention pods' metrics (file or http://HOST:PORT): measured positions/s = "
                  "dmoe_attention_positions_total / dmoe_attention_busy_seconds_total; with "
                  "--shard-metrics also the dispatch overhead");
  cmd->add_option("--positions-per-token", f->positions_per_token,
                  "Positions computed per generated token (prefill included); default "
                  "forwards per token x block length");
  cmd->add_option("--shared-cores", f->shared_cores,
                  "Cores all pods share (one machine, one thread per pod); 0: own cores each")
      ->capture_default_str();
  cmd->add_option("--micro-batches", f->micro_batches,
                  "Micro-batches per attention replica (dmoe-attention --micro-batches)")
      ->capture_default_str();
  cmd->add_flag("--predict", f->predict,
                "Predict the layout given by --attention-replicas, --expert-shards, "
                "--expert-replicas and --redundant-slots instead of planning one");
  cmd->add_option("--attention-replicas", f->attention_replicas, "--predict: attention replicas")
      ->capture_default_str();
  cmd->add_option("--expert-shards", f->expert_shards, "--predict: expert shards (even ranges)")
      ->capture_default_str();
  cmd->add_option("--expert-replicas", f->expert_replicas, "--predict: pods per expert shard")
      ->capture_default_str();
  cmd->add_option("--redundant-slots", f->redundant_slots,
                  "--predict: redundant slots per shard and MoE layer (the balancer's map on "
                  "the --load profile)")
      ->capture_default_str();
  cmd->add_option("--context-tokens", f->context_tokens,
                  "Context length for the attention FLOPs")
      ->capture_default_str();
  cmd->add_option("--dispatch-ms", f->dispatch_ms,
                  "Fixed latency of one MoE layer's dispatch round trip, ms")
      ->capture_default_str();
  cmd->add_option("--dispatch-us-per-row", f->dispatch_us_per_row,
                  "Cost of moving one row beyond its compute, us; default: measured from "
                  "--attention-metrics and --shard-metrics, else 0");
  cmd->add_option("--scheduler-metrics", f->scheduler_metrics,
                  "The scheduler's metrics (file or http://HOST:PORT): with --attention-metrics, "
                  "its time per forward beyond the attention step");
  cmd->add_option("--step-overhead-ms", f->step_overhead_ms,
                  "The scheduler's time per forward beyond the attention step, ms; default: "
                  "measured from --scheduler-metrics, else 0");
  cmd->add_option("--utilization", f->utilization, "Fraction of each pod's capacity to plan for")
      ->capture_default_str();
  cmd->add_option("--expert-pod-memory-gib", f->expert_pod_memory_gib,
                  "Memory for routed-expert weights per expert pod; 0: no limit")
      ->capture_default_str();
  cmd->add_option("--max-redundant-slots", f->max_redundant_slots,
                  "Most redundant slots per shard and MoE layer to consider")
      ->capture_default_str();
  cmd->add_option("--imbalance-bound", f->imbalance_bound,
                  "Fewest redundant slots whose planned imbalance is at most this")
      ->capture_default_str();
  cmd->add_option("--max-shards", f->max_shards, "Most expert shards to consider")
      ->capture_default_str();
  cmd->add_flag("--show-map", f->show_map, "Also list every redundant expert copy");
  cmd->add_flag("--json", f->json, "Print the plan as JSON");
  cmd->callback([f, exit_code] {
    absl::Status status = RunPlan(*f);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
