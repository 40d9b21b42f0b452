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

absl::StatusOr<double> MeasuredShardRowsPerSecond(absl::string_view text) {
  double rows = 0, busy = 0;
  bool have_rows = false, have_busy = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    Sample s;
    DMOE_ASSIGN_OR_RETURN(bool is_sample, ParseSample(line, &s));
    if (!is_sample) continue;
    if (s.name == "dmoe_expert_rows_total") {
      rows += s.value;
      have_rows = true;
    } else if (s.name == "dmoe_expert_busy_seconds_total") {
      busy += s.value;
      have_busy = true;
    }
  }
  if (!have_rows || !have_busy || busy <= 0 || rows <= 0) {
    return absl::NotFoundError(
        "expert pod metrics need dmoe_expert_rows_total and dmoe_expert_busy_seconds_total > 0");
  }
  return rows / busy;
}

absl::Status CapacityRates::Validate() const {
  if (!(forwards_per_token > 0)) return absl::InvalidArgumentError("forwards per token must be > 0");
  if (!(attention_positions_per_s > 0)) {
    return absl::InvalidArgumentError("attention positions/s must be > 0");
  }
  if (!(shard_rows_per_s > 0)) return absl::InvalidArgumentError("shard rows/s must be > 0");
  if (dispatch_ms < 0) return absl::InvalidArgumentError("dispatch ms must be >= 0");
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
  const double block = static_cast<double>(config.block_length);
  const double moe_layers = static_cast<double>(config.num_hidden_layers -
                                                std::min(config.first_k_dense_replace,
                                                         config.num_hidden_layers));
  const double shards = static_cast<double>(expert_shards);
  // One forward of one block: attention for B positions, then per MoE layer the hottest
  // shard's share of the B·k rows plus the dispatch round trip.
  const double rows_per_layer = block * static_cast<double>(config.num_experts_per_tok);
  const double step_s = block / r.attention_positions_per_s +
                        moe_layers * (rows_per_layer * imbalance / shards / r.shard_rows_per_s +
                                      r.dispatch_ms / 1000);
  CapacityPrediction p;
  p.latency_ms = step_s * r.forwards_per_token * 1000;
  // Throughput: whichever pool saturates first.
  const double positions_per_token = r.forwards_per_token * block;
  const double by_attention =
      static_cast<double>(attention_replicas) * r.attention_positions_per_s / positions_per_token;
  const double by_experts = shards * static_cast<double>(expert_replicas) * r.shard_rows_per_s /
                            imbalance / (positions_per_token * costs.rows_per_position);
  p.tokens_per_s = std::min(by_attention, by_experts);
  return p;
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
  plan.positions_per_s = target.tokens_per_s * rates.forwards_per_token * block;
  plan.rows_per_s = plan.positions_per_s * costs.rows_per_position;
  plan.attention_replicas =
      CeilDiv(plan.positions_per_s, rates.attention_positions_per_s * rates.utilization);

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
      cluster::ExpertMap m = RangeExpertMap(shards, num_experts, moe_layers);
      double imb = 1;
      if (!load.empty()) {
        ExpertPlanOptions o = rates.plan;
        o.redundant_slots = s;
        if (s > 0) m = PlanExpertMap(load, shards, o);
        imb = Imbalance(m, load, n);
        if (s == 0) range_imbalance = imb;
      }
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
    p.attention_replicas = plan.attention_replicas;
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
        block / rates.attention_positions_per_s * rates.forwards_per_token * 1000));
  }
  if (!load.empty() && best.planned_imbalance > rates.imbalance_bound) {
    best.notes.push_back(absl::StrFormat(
        "planned imbalance %.3f stays above the bound %.3f with %d redundant slots",
        best.planned_imbalance, rates.imbalance_bound, best.redundant_slots));
  }
  return best;
}

}  // namespace dmoe::scheduler
