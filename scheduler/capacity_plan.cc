#include "scheduler/capacity_plan.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/status_macros.h"

namespace dmoe::scheduler {
namespace {

// One sample of Prometheus text: name, labels, value. False for comments and blank lines.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

absl::StatusOr<bool> ParseSample(absl::string_view line, Sample* out) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (line.empty() || line.front() == '#') return false;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("metrics line '", line, "': ", why));
  };
  size_t i = 0;
  while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
  out->name = std::string(line.substr(0, i));
  out->labels.clear();
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (true) {
      while (i < line.size() && (line[i] == ' ' || line[i] == ',')) ++i;
      if (i >= line.size()) return bad("unterminated labels");
      if (line[i] == '}') {
        ++i;
        break;
      }
      const size_t eq = line.find('=', i);
      if (eq == absl::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
        return bad("expected label=\"value\"");
      }
      std::string key(line.substr(i, eq - i));
      std::string value;
      size_t j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < line.size()) {
          ++j;
          value += line[j] == 'n' ? '\n' : line[j];
        } else {
          value += line[j];
        }
      }
      if (j >= line.size()) return bad("unterminated label value");
      out->labels[key] = value;
      i = j + 1;
    }
  }
  std::vector<absl::string_view> rest =
      absl::StrSplit(line.substr(i), ' ', absl::SkipEmpty());
  if (rest.empty()) return bad("no value");
  if (rest[0] == "+Inf" || rest[0] == "-Inf" || rest[0] == "NaN") return bad("not a count");
  if (!absl::SimpleAtod(rest[0], &out->value)) return bad("value is not a number");
  return true;
}

int64_t CeilDiv(double need, double per) {
  if (need <= 0) return 1;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(need / per - 1e-9)));
}

}  // namespace

TokenCosts ComputeTokenCosts(const model::ModelConfig& c, int64_t context_tokens) {
  const double h = static_cast<double>(c.hidden_size);
  const double q = static_cast<double>(c.q_width());
  const double qkv = static_cast<double>(c.qkv_width());
  const double layers = static_cast<double>(c.num_hidden_layers);
  const double dense = static_cast<double>(std::min(c.first_k_dense_replace, c.num_hidden_layers));
  const double moe = layers - dense;
  const double ie = static_cast<double>(c.moe_intermediate_size);
  TokenCosts t;
  t.attention_flops = layers * (2 * h * qkv + 2 * q * h + 4 * static_cast<double>(context_tokens) * q) +
                      dense * 6 * h * static_cast<double>(c.intermediate_size) +
                      moe * (2 * h * static_cast<double>(c.num_experts) +
                             6 * h * static_cast<double>(c.num_shared_experts) * ie) +
                      2 * h * static_cast<double>(c.vocab_size);
  t.expert_row_flops = 6 * h * ie;
  t.rows_per_position = static_cast<double>(c.num_experts_per_tok) * moe;
  t.expert_weight_bytes = 3 * h * ie * static_cast<double>(DTypeSize(c.torch_dtype));
  t.row_wire_bytes = 2 * h * 4;
  return t;
}

absl::StatusOr<ExpertLoad> ParseExpertLoadProfile(absl::string_view text,
                                                  const model::ModelConfig& c) {
  const int64_t first = c.first_k_dense_replace;
  const int64_t moe_layers = c.num_hidden_layers - first;
  if (moe_layers <= 0 || c.num_experts <= 0) {
    return absl::InvalidArgumentError("the model has no MoE layers");
  }
  ExpertLoad load(moe_layers, std::vector<double>(c.num_experts, 0));
  int64_t samples = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    Sample s;
    DMOE_ASSIGN_OR_RETURN(bool is_sample, ParseSample(line, &s));
    if (!is_sample || s.name != "dmoe_expert_tokens_total") continue;
    int64_t layer, expert;
    auto l = s.labels.find("layer");
    auto e = s.labels.find("expert");
    if (l == s.labels.end() || e == s.labels.end() || !absl::SimpleAtoi(l->second, &layer) ||
        !absl::SimpleAtoi(e->second, &expert)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line '", line, "': needs integer layer and expert labels"));
    }
    if (layer < first || layer >= c.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metrics line '", line, "': layer ", layer, " is not a MoE layer of this model [",
          first, ", ", c.num_hidden_layers, ")"));
    }
    if (expert < 0 || expert >= c.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line '", line, "': expert ",
                                                     expert, " >= ", c.num_experts,
                                                     " experts of this model"));
    }
    if (s.value < 0) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line '", line, "': negative"));
    }
    load[layer - first][expert] += s.value;
    ++samples;
  }
  if (samples == 0) {
    return absl::NotFoundError("no dmoe_expert_tokens_total{layer,expert} samples");
  }
  return load;
}

namespace {

// Sums of the samples named `name` (over every label set) in Prometheus text; `found` tells
// whether any was there.
absl::StatusOr<double> SumOf(absl::string_view text, absl::string_view name, bool* found) {
  double total = 0;
  *found = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    Sample s;
    DMOE_ASSIGN_OR_RETURN(bool is_sample, ParseSample(line, &s));
    if (!is_sample || s.name != name) continue;
    total += s.value;
    *found = true;
  }
  return total;
}

// sum / count of a histogram, NOT_FOUND when it is missing or empty.
absl::StatusOr<double> HistogramMean(absl::string_view text, absl::string_view name) {
  bool have_sum = false, have_count = false;
  DMOE_ASSIGN_OR_RETURN(double sum, SumOf(text, absl::StrCat(name, "_sum"), &have_sum));
  DMOE_ASSIGN_OR_RETURN(double count, SumOf(text, absl::StrCat(name, "_count"), &have_count));
  if (!have_sum || !have_count || count <= 0) {
    return absl::NotFoundError(absl::StrCat("no ", name, " observations"));
  }
  return sum / count;
}

}  // namespace

absl::StatusOr<double> MeasuredShardRowsPerSecond(absl::string_view text) {
  bool have_rows = false, have_busy = false;
  DMOE_ASSIGN_OR_RETURN(double rows, SumOf(text, "dmoe_expert_rows_total", &have_rows));
  DMOE_ASSIGN_OR_RETURN(double busy, SumOf(text, "dmoe_expert_busy_seconds_total", &have_busy));
  if (!have_rows || !have_busy || busy <= 0 || rows <= 0) {
    return absl::NotFoundError(
        "expert pod metrics need dmoe_expert_rows_total and dmoe_expert_busy_seconds_total > 0");
  }
  return rows / busy;
}

absl::StatusOr<double> MeasuredAttentionPositionsPerSecond(absl::string_view text) {
  bool have_positions = false, have_busy = false;
  DMOE_ASSIGN_OR_RETURN(double positions,
                        SumOf(text, "dmoe_attention_positions_total", &have_positions));
  DMOE_ASSIGN_OR_RETURN(double busy, SumOf(text, "dmoe_attention_busy_seconds_total", &have_busy));
  if (!have_positions || !have_busy || positions <= 0 || busy <= 0) {
    return absl::NotFoundError(
        "attention pod metrics need dmoe_attention_positions_total and "
        "dmoe_attention_busy_seconds_total > 0");
  }
  return positions / busy;
}

absl::StatusOr<double> MeasuredDispatchMicrosPerRow(absl::string_view attention_text,
                                                    absl::string_view expert_text) {
  bool have_dispatch = false, have_compute = false, have_rows = false;
  DMOE_ASSIGN_OR_RETURN(double dispatch, SumOf(attention_text, "dmoe_expert_dispatch_seconds_sum",
                                               &have_dispatch));
  DMOE_ASSIGN_OR_RETURN(double compute,
                        SumOf(expert_text, "dmoe_expert_compute_seconds_sum", &have_compute));
  DMOE_ASSIGN_OR_RETURN(double rows, SumOf(expert_text, "dmoe_expert_rows_total", &have_rows));
  if (!have_dispatch || !have_compute || !have_rows || rows <= 0) {
    return absl::NotFoundError(
        "the dispatch cost needs dmoe_expert_dispatch_seconds (attention pods), "
        "dmoe_expert_compute_seconds and dmoe_expert_rows_total > 0 (expert pods)");
  }
  return std::max(0.0, dispatch - compute) / rows * 1e6;
}

absl::StatusOr<double> MeasuredStepOverheadMs(absl::string_view scheduler_text,
                                              absl::string_view attention_text) {
  DMOE_ASSIGN_OR_RETURN(double iteration,
                        HistogramMean(scheduler_text, "dmoe_iteration_duration_seconds"));
  DMOE_ASSIGN_OR_RETURN(double step, HistogramMean(attention_text, "dmoe_attention_step_seconds"));
  return std::max(0.0, iteration - step) * 1000;
}

absl::Status CapacityRates::Validate() const {
  if (!(forwards_per_token > 0)) return absl::InvalidArgumentError("forwards per token must be > 0");
  if (!(attention_positions_per_s > 0)) {
    return absl::InvalidArgumentError("attention positions/s must be > 0");
  }
  if (!(shard_rows_per_s > 0)) return absl::InvalidArgumentError("shard rows/s must be > 0");
  if (dispatch_ms < 0) return absl::InvalidArgumentError("dispatch ms must be >= 0");
  if (dispatch_us_per_row < 0) return absl::InvalidArgumentError("dispatch µs per row < 0");
  if (step_overhead_ms < 0) return absl::InvalidArgumentError("step overhead ms < 0");
  if (positions_per_token < 0) return absl::InvalidArgumentError("positions per token < 0");
  if (shared_cores < 0) return absl::InvalidArgumentError("shared cores < 0");
  if (micro_batches < 1) return absl::InvalidArgumentError("micro-batches < 1");
  if (!(utilization > 0 && utilization <= 1)) {
    return absl::InvalidArgumentError("utilization must be in (0, 1]");
  }
  if (expert_pod_memory_bytes < 0) return absl::InvalidArgumentError("memory must be >= 0");
  if (max_redundant_slots < 0) return absl::InvalidArgumentError("max redundant slots < 0");
  if (imbalance_bound < 1) return absl::InvalidArgumentError("imbalance bound < 1");
  if (max_shards < 1) return absl::InvalidArgumentError("max shards < 1");
  return absl::OkStatus();
}

ShardRanges EvenShardRanges(int64_t num_experts, int64_t num_shards) {
  ShardRanges out;
  for (int64_t i = 0; i < num_shards; ++i) {
    out.emplace_back(i * num_experts / num_shards, (i + 1) * num_experts / num_shards);
  }
  return out;
}

CapacityPrediction PredictCapacity(const model::ModelConfig& config, const CapacityRates& r,
                                   int64_t attention_replicas, int64_t expert_shards,
                                   int64_t expert_replicas, double imbalance) {
  const TokenCosts costs = ComputeTokenCosts(config, 0);
  const double moe_layers = static_cast<double>(config.num_hidden_layers -
                                                std::min(config.first_k_dense_replace,
                                                         config.num_hidden_layers));
  const double shards = static_cast<double>(expert_shards);
  // Q positions per generated token, Q·k rows per MoE layer.
  const double q = r.positions_per_token > 0
                       ? r.positions_per_token
                       : r.forwards_per_token * static_cast<double>(config.block_length);
  const double layer_rows = q * static_cast<double>(config.num_experts_per_tok);
  // The hottest shard's share of a layer's rows; with C shared cores the shards of a layer
  // compute at most C at a time.
  double parallel_share = imbalance / shards;
  if (r.shared_cores > 0) {
    parallel_share = std::max(parallel_share, 1.0 / static_cast<double>(r.shared_cores));
  }
  const double row_s = 1 / r.shard_rows_per_s;
  const double wire_s = r.dispatch_us_per_row * 1e-6;
  // A micro-batch's time per generated token: the attention replica's own work, then per MoE
  // layer the wait for the hottest shard and for moving the rows (it does nothing else
  // meanwhile; the replica's other micro-batches do).
  const double replica_token_s =
      q / r.attention_positions_per_s + moe_layers * layer_rows * (parallel_share * row_s + wire_s);
  CapacityPrediction p;
  p.replica_tokens_per_s = static_cast<double>(r.micro_batches) / replica_token_s;
  // A lone request also waits for the fixed part of each dispatch and the scheduler's step.
  p.latency_ms = (replica_token_s + r.forwards_per_token * (moe_layers * r.dispatch_ms +
                                                            r.step_overhead_ms) / 1000) *
                 1000;
  // Throughput: whichever pool saturates first (under load the fixed latencies overlap).
  const double by_attention = static_cast<double>(attention_replicas) * p.replica_tokens_per_s;
  const double by_experts = shards * static_cast<double>(expert_replicas) * r.shard_rows_per_s /
                            imbalance / (q * costs.rows_per_position);
  p.tokens_per_s = std::min(by_attention, by_experts);
  if (r.shared_cores > 0) {
    // Every pod's work on the same C cores (one thread each): a token's attention, rows and
    // row moves, C at a time.
    const double core_s_per_token =
        q / r.attention_positions_per_s + q * costs.rows_per_position * (row_s + wire_s);
    p.tokens_per_s =
        std::min(p.tokens_per_s, static_cast<double>(r.shared_cores) / core_s_per_token);
  }
  return p;
}

double PlannedImbalance(const ExpertLoad& load, int64_t num_experts, int64_t shards,
                        int64_t redundant_slots, const ExpertPlanOptions& options,
                        cluster::ExpertMap* map) {
  const ShardRanges ranges = EvenShardRanges(num_experts, shards);
  cluster::ExpertMap m =
      RangeExpertMap(ranges, num_experts, static_cast<int64_t>(std::max<size_t>(1, load.size())));
  double imbalance = 1;
  if (!load.empty()) {
    if (redundant_slots > 0 && shards > 1) {
      ExpertPlanOptions o = options;
      o.redundant_slots = redundant_slots;
      m = PlanExpertMap(load, ranges, o);
    }
    imbalance = Imbalance(m, load, shards);
  }
  if (map != nullptr) *map = std::move(m);
  return imbalance;
}

absl::StatusOr<CapacityPlan> PlanCapacity(const model::ModelConfig& config,
                                          const ExpertLoad& load, const CapacityTarget& target,
                                          const CapacityRates& rates) {
  DMOE_RETURN_IF_ERROR(rates.Validate());
  if (!(target.tokens_per_s > 0)) return absl::InvalidArgumentError("target tokens/s must be > 0");
  if (target.latency_ms < 0) return absl::InvalidArgumentError("target latency must be >= 0");
  const int64_t num_experts = config.num_experts;
  const int64_t moe_layers =
      config.num_hidden_layers - std::min(config.first_k_dense_replace, config.num_hidden_layers);
  if (num_experts <= 0 || moe_layers <= 0) {
    return absl::InvalidArgumentError("the model has no MoE layers");
  }
  if (!load.empty() && (static_cast<int64_t>(load.size()) != moe_layers ||
                        static_cast<int64_t>(load[0].size()) != num_experts)) {
    return absl::InvalidArgumentError("the load profile does not match the model's MoE layers");
  }
  const TokenCosts costs = ComputeTokenCosts(config, 0);
  const double block = static_cast<double>(config.block_length);
  CapacityPlan plan;
  plan.positions_per_s = target.tokens_per_s * (rates.positions_per_token > 0
                                                    ? rates.positions_per_token
                                                    : rates.forwards_per_token * block);
  plan.rows_per_s = plan.positions_per_s * costs.rows_per_position;

  const double layer_bytes = static_cast<double>(moe_layers) * costs.expert_weight_bytes;
  const int64_t max_shards = std::min(rates.max_shards, num_experts);
  bool found = false;
  CapacityPlan best;  // the lowest-latency layout, for when none meets the target
  for (int64_t n = 1; n <= max_shards && !found; ++n) {
    const ShardRanges shards = EvenShardRanges(num_experts, n);
    int64_t widest = 0;
    for (const auto& [first, last] : shards) widest = std::max(widest, last - first);
    // Redundant slots: the fewest reaching the bound, within memory.
    int64_t slots = 0;
    cluster::ExpertMap map;
    double range_imbalance = 1, imbalance = 1;
    const int64_t max_slots = n < 2 ? 0 : rates.max_redundant_slots;
    for (int64_t s = 0; s <= max_slots; ++s) {
      if (rates.expert_pod_memory_bytes > 0 && s > 0 &&
          static_cast<double>(widest + s) * layer_bytes > rates.expert_pod_memory_bytes) {
        break;
      }
      cluster::ExpertMap m;
      const double imb = PlannedImbalance(load, num_experts, n, s, rates.plan, &m);
      if (s == 0) range_imbalance = imb;
      if (s == 0 || imb < imbalance - 1e-9) {
        slots = s;
        map = std::move(m);
        imbalance = imb;
      }
      if (imbalance <= rates.imbalance_bound) break;
    }
    CapacityPlan p;
    p.positions_per_s = plan.positions_per_s;
    p.rows_per_s = plan.rows_per_s;
    p.attention_replicas =
        CeilDiv(target.tokens_per_s,
                PredictCapacity(config, rates, 1, n, 1, imbalance).replica_tokens_per_s *
                    rates.utilization);
    p.expert_shards = n;
    p.shards = shards;
    p.redundant_slots = slots;
    p.map = load.empty() ? cluster::ExpertMap{} : std::move(map);
    p.range_imbalance = range_imbalance;
    p.planned_imbalance = imbalance;
    p.hottest_shard_rows_per_s = plan.rows_per_s * imbalance / static_cast<double>(n);
    p.expert_replicas =
        CeilDiv(p.hottest_shard_rows_per_s, rates.shard_rows_per_s * rates.utilization);
    p.expert_pod_weight_bytes = static_cast<double>(widest + slots) * layer_bytes;
    p.fits_memory = rates.expert_pod_memory_bytes <= 0 ||
                    p.expert_pod_weight_bytes <= rates.expert_pod_memory_bytes;
    const CapacityPrediction pred = PredictCapacity(config, rates, p.attention_replicas, n,
                                                    p.expert_replicas, imbalance);
    p.latency_ms = pred.latency_ms;
    p.predicted_tokens_per_s = pred.tokens_per_s;
    p.meets_latency = target.latency_ms <= 0 || p.latency_ms <= target.latency_ms;
    if (p.fits_memory && p.meets_latency) {
      best = std::move(p);
      found = true;
    } else if (best.expert_shards == 0 || (p.fits_memory && !best.fits_memory) ||
               (p.fits_memory == best.fits_memory && p.latency_ms < best.latency_ms)) {
      best = std::move(p);
    }
  }
  if (!best.fits_memory) {
    best.notes.push_back(absl::StrFormat(
        "no layout of at most %d shards fits %.3g GiB of expert weights per pod",
        max_shards, rates.expert_pod_memory_bytes / (1 << 30)));
  }
  if (!best.meets_latency) {
    best.notes.push_back(absl::StrFormat(
        "the latency target %.3g ms/token is out of reach: %.3g ms/token at best (attention "
        "alone: %.3g ms/token; faster pods or fewer forwards per token are needed)",
        target.latency_ms, best.latency_ms,
        plan.positions_per_s / target.tokens_per_s / rates.attention_positions_per_s * 1000));
  }
  if (!load.empty() && best.planned_imbalance > rates.imbalance_bound) {
    best.notes.push_back(absl::StrFormat(
        "planned imbalance %.3f stays above the bound %.3f with %d redundant slots",
        best.planned_imbalance, rates.imbalance_bound, best.redundant_slots));
  }
  return best;
}

}  // namespace dmoe::scheduler
