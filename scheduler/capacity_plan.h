// Capacity planning (`dmoe plan`, docs/capacity-planning.md): from a model config, a measured
// per-expert load profile and a target (generated tokens/s, time per generated token), how
// many attention replicas, expert shards, replicas per shard and redundant expert slots a
// cluster needs. The cost model is written out here and in the doc; the redundant slots are
// placed by the balancer's own planner (PlanExpertMap), so the imbalance the plan assumes is
// the one `dmoe-scheduler --expert-balancing` would reach on that profile. Pure: no I/O.
#ifndef DMOE_SCHEDULER_CAPACITY_PLAN_H_
#define DMOE_SCHEDULER_CAPACITY_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cluster/placement.h"
#include "model/config.h"
#include "scheduler/expert_balancer.h"

namespace dmoe::scheduler {

// What one position (one token slot of a block) costs in one forward, from config.json.
struct TokenCosts {
  // FLOPs on the attention replica per position: per layer the q/k/v/o projections
  // 2·H·(q + 2kv) + 2·q·H and attention over `context` positions 4·context·q; per dense layer
  // the SwiGLU 6·H·I; per MoE layer the router 2·H·E and the shared experts 6·H·S·I_e; once the
  // LM head 2·H·V.
  double attention_flops = 0;
  // FLOPs of one row: one position through one routed expert of one layer (SwiGLU, 6·H·I_e).
  double expert_row_flops = 0;
  // Rows per position: top-k x MoE layers.
  double rows_per_position = 0;
  // Weights of one routed expert of one layer: 3·H·I_e·sizeof(dtype).
  double expert_weight_bytes = 0;
  // Activations on the wire per row, both ways (F32): the hidden row out (once per shard,
  // counted per row as an upper bound) and the expert's output back, 2·H·4.
  double row_wire_bytes = 0;
};
TokenCosts ComputeTokenCosts(const model::ModelConfig& config, int64_t context_tokens);

// Tokens routed per (MoE layer, expert) from Prometheus text exposition format: every
// `dmoe_expert_tokens_total{...,layer="L",expert="E",...} V` sample, summed over the other
// labels (model_version) — pass the concatenated scrapes of several attention replicas to sum
// them. Layers are model layer indices (first MoE layer = first_k_dense_replace); the result
// is [layer - first_k_dense_replace][expert]. NOT_FOUND without any such sample;
// INVALID_ARGUMENT (naming the line) for a layer or expert outside the config or a bad value.
absl::StatusOr<ExpertLoad> ParseExpertLoadProfile(absl::string_view prometheus_text,
                                                  const model::ModelConfig& config);

// Rows per second one expert pod computes, from its Prometheus text (summed over pods):
// dmoe_expert_rows_total / dmoe_expert_busy_seconds_total. NOT_FOUND when either is missing
// or no time was spent.
absl::StatusOr<double> MeasuredShardRowsPerSecond(absl::string_view prometheus_text);

// Positions per second one attention replica computes on its own, from its Prometheus text
// (summed over replicas): dmoe_attention_positions_total / dmoe_attention_busy_seconds_total
// (busy: lane-seconds of steps minus the micro-batches' waits for expert shards, so this is
// one micro-batch's rate). NOT_FOUND when either is missing or 0.
absl::StatusOr<double> MeasuredAttentionPositionsPerSecond(absl::string_view prometheus_text);

// What moving one row costs beyond its compute, µs: the attention replicas' summed
// dmoe_expert_dispatch_seconds minus the expert pods' summed dmoe_expert_compute_seconds, over
// the expert pods' dmoe_expert_rows_total (at least 0). NOT_FOUND when a series is missing or
// no row was computed.
absl::StatusOr<double> MeasuredDispatchMicrosPerRow(absl::string_view attention_text,
                                                    absl::string_view expert_text);

// The scheduler's time per forward beyond the attention replica's step, ms: the mean
// dmoe_iteration_duration_seconds (scheduler) minus the mean dmoe_attention_step_seconds
// (attention replicas), at least 0; meaningful for lone requests (one sequence per
// iteration). NOT_FOUND when either histogram is missing or empty.
absl::StatusOr<double> MeasuredStepOverheadMs(absl::string_view scheduler_text,
                                              absl::string_view attention_text);

struct CapacityTarget {
  double tokens_per_s = 0;     // generated tokens per second, the whole cluster
  double latency_ms = 0;       // time per generated token of one request; 0: no bound
};

struct CapacityRates {
  // Forwards per generated token (1 / TPF): each forward computes one block of
  // block_length positions. dmoe bench reports forwards and generated_tokens.
  double forwards_per_token = 1;
  // Positions an attention replica computes per generated token; 0: forwards_per_token x
  // block_length. Measured, it also counts the prompt's prefill and the finished blocks
  // recomputed to join the KV cache (dmoe_attention_positions_total / generated tokens).
  double positions_per_token = 0;
  // Cores every pod shares (all pods on one machine, one compute thread each, as in the
  // loopback checks); 0: each pod has cores of its own. With C shared cores a layer's shards
  // compute in parallel only C at a time, and the whole cluster's work shares the C cores.
  int64_t shared_cores = 0;
  // Micro-batches per attention replica (dmoe-attention --micro-batches, default 2): under
  // load, while one waits for its experts another computes. A lone request uses one.
  int64_t micro_batches = 2;
  // Positions per second one attention replica computes (everything but routed experts).
  double attention_positions_per_s = 0;
  // Rows per second one expert pod computes.
  double shard_rows_per_s = 0;
  // Fixed overhead of one MoE layer's dispatch round trip (the call's latency), ms.
  double dispatch_ms = 0;
  // What moving one row costs beyond its compute (pack, serialise, send, receive, unpack,
  // both ways), µs of the pods' cores: it grows with the rows, so it is per row. Measured:
  // MeasuredDispatchMicrosPerRow.
  double dispatch_us_per_row = 0;
  // The scheduler's own time per forward (planning, the Step RPC, commits), ms; a lone
  // request waits for it, F times per token. Measured: MeasuredStepOverheadMs.
  double step_overhead_ms = 0;
  // Fraction of each pod's capacity the plan may use (queueing headroom).
  double utilization = 0.8;
  // Memory for expert weights per expert pod; 0: no limit.
  double expert_pod_memory_bytes = 0;
  int64_t max_redundant_slots = 8;
  // The balancer's bound: the fewest redundant slots whose planned imbalance is at most this.
  double imbalance_bound = 1.15;
  int64_t max_shards = 64;     // also at most the number of experts
  ExpertPlanOptions plan{};    // redundant_slots is set per candidate

  absl::Status Validate() const;
};

struct CapacityPlan {
  int64_t attention_replicas = 0;
  int64_t expert_shards = 0;
  int64_t expert_replicas = 0;   // pods per shard
  int64_t redundant_slots = 0;   // per shard and MoE layer
  ShardRanges shards;            // home ranges
  cluster::ExpertMap map;        // PlanExpertMap on the profile (empty: no profile)
  double range_imbalance = 1;    // the profile on the range map
  double planned_imbalance = 1;  // ... and on `map`
  double positions_per_s = 0;    // attention load
  double rows_per_s = 0;         // expert load, all shards
  double hottest_shard_rows_per_s = 0;  // rows_per_s x imbalance / shards
  double latency_ms = 0;         // predicted time per generated token of a lone request
  double predicted_tokens_per_s = 0;  // what the planned pods sustain at 100% utilization
  double expert_pod_weight_bytes = 0;  // routed experts each expert pod holds (range + slots)
  bool meets_latency = true;
  bool fits_memory = true;
  std::vector<std::string> notes;
};

// The plan. The load profile may be empty (uniform routing is assumed). Shards: the fewest,
// starting from what memory requires, whose predicted latency meets the target; their
// redundant slots: the fewest whose planned imbalance is at most the bound (else the lowest
// imbalance); replicas per shard and attention replicas: enough for the target tokens/s at
// the utilization. See docs/capacity-planning.md for the formulas.
absl::StatusOr<CapacityPlan> PlanCapacity(const model::ModelConfig& config,
                                          const ExpertLoad& load, const CapacityTarget& target,
                                          const CapacityRates& rates);

// Predicted time per generated token of a lone request (ms) and the tokens/s the pods sustain,
// for a given layout (used by PlanCapacity and to check a measured run).
struct CapacityPrediction {
  double latency_ms = 0;
  double tokens_per_s = 0;
  // What one attention replica sustains: each micro-batch waits for its experts.
  double replica_tokens_per_s = 0;
};
CapacityPrediction PredictCapacity(const model::ModelConfig& config, const CapacityRates& rates,
                                   int64_t attention_replicas, int64_t expert_shards,
                                   int64_t expert_replicas, double imbalance);

// The imbalance ι (Σ layers max shard load / Σ mean) `dmoe-scheduler --expert-balancing
// --redundant-slots S` reaches on `load` with even ranges over `shards` shards: the range map for
// S = 0, PlanExpertMap otherwise. 1 for an empty load. The map goes to *map when not null.
double PlannedImbalance(const ExpertLoad& load, int64_t num_experts, int64_t shards,
                        int64_t redundant_slots, const ExpertPlanOptions& options,
                        cluster::ExpertMap* map = nullptr);

// Shard i of n holds experts [i·E/n, (i+1)·E/n).
ShardRanges EvenShardRanges(int64_t num_experts, int64_t num_shards);

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_CAPACITY_PLAN_H_
