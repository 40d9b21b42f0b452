#include "transport/sharded_expert_executor.h"

#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "transport/shard_info.h"

namespace dmoe::transport {
namespace {

std::string Range(int64_t first, int64_t last) { return absl::StrCat("[", first, ", ", last, ")"); }

// Codes that say the request itself is wrong: another replica would answer the same.
bool IsRetriable(absl::StatusCode code) {
  return code != absl::StatusCode::kInvalidArgument &&
         code != absl::StatusCode::kFailedPrecondition && code != absl::StatusCode::kOutOfRange;
}

}  // namespace

absl::Status ExpertPlacement::Validate(int64_t num_experts) const {
  if (shards.empty()) return absl::InvalidArgumentError("shards: the placement has no shard");
  int64_t expected_first = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const ExpertShard& shard = shards[i];
    const std::string name = absl::StrCat("shards[", i, "]");
    if (shard.expert_first != expected_first || shard.expert_last <= shard.expert_first) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": experts ", Range(shard.expert_first, shard.expert_last),
          " must be a non-empty range starting at ", expected_first,
          " (shards are sorted, disjoint and cover [0, ", num_experts, "))"));
    }
    if (shard.replicas.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": has no replica"));
    }
    for (size_t r = 0; r < shard.replicas.size(); ++r) {
      if (shard.replicas[r] == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(name, ".replicas[", r, "]: is null"));
      }
    }
    expected_first = shard.expert_last;
  }
  if (expected_first != num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("shards: cover [0, ", expected_first,
                                                   "), expected [0, ", num_experts, ")"));
  }
  const int64_t num_shards = static_cast<int64_t>(shards.size());
  for (size_t l = 0; l < holders.size(); ++l) {
    if (static_cast<int64_t>(holders[l].size()) != num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("holders[", l, "]: has ", holders[l].size(),
                                                     " experts, expected ", num_experts));
    }
    for (size_t e = 0; e < holders[l].size(); ++e) {
      const std::vector<int32_t>& h = holders[l][e];
      bool ok = !h.empty();
      for (size_t i = 0; ok && i < h.size(); ++i) {
        ok = h[i] >= 0 && h[i] < num_shards && (i == 0 || h[i - 1] < h[i]);
      }
      if (!ok) {
        return absl::InvalidArgumentError(absl::StrCat(
            "holders[", l, "][", e, "]: [", absl::StrJoin(h, ", "),
            "] must be sorted, unique shard indices in [0, ", num_shards, ")"));
      }
    }
  }
  if (!outstanding.empty()) {
    if (outstanding.size() != shards.size()) {
      return absl::InvalidArgumentError(absl::StrCat("outstanding: ", outstanding.size(),
                                                     " counters for ", shards.size(), " shards"));
    }
    for (size_t i = 0; i < outstanding.size(); ++i) {
      if (outstanding[i] == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("outstanding[", i, "]: is null"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ShardedExpertExecutorOptions::Validate() const {
  if (num_experts < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_experts: ", num_experts, " < 1"));
  }
  if (call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("call_timeout: must be positive");
  }
  if (replica_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("replica_backoff: must not be negative");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShardedExpertExecutor>> ShardedExpertExecutor::Create(
    const ShardedExpertExecutorOptions& options, ExpertPlacement placement) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto executor = std::unique_ptr<ShardedExpertExecutor>(new ShardedExpertExecutor(options));
  DMOE_RETURN_IF_ERROR(executor->SetPlacement(std::move(placement)));
  return executor;
}

absl::Status ShardedExpertExecutor::SetPlacement(ExpertPlacement placement) {
  DMOE_RETURN_IF_ERROR(placement.Validate(options_.num_experts));
  placement_ = std::move(placement);
  shard_of_expert_.assign(static_cast<size_t>(options_.num_experts), -1);
  states_.clear();
  states_.resize(placement_.shards.size());
  fallback_.clear();
  fallback_.resize(placement_.shards.size());
  outstanding_ = placement_.outstanding;
  if (outstanding_.empty()) {
    for (size_t i = 0; i < placement_.shards.size(); ++i) {
      outstanding_.push_back(std::make_shared<std::atomic<int64_t>>(0));
    }
  }
  for (size_t i = 0; i < placement_.shards.size(); ++i) {
    const ExpertShard& shard = placement_.shards[i];
    for (int64_t e = shard.expert_first; e < shard.expert_last; ++e) {
      shard_of_expert_[e] = static_cast<int32_t>(i);
    }
    states_[i].down_until.assign(shard.replicas.size(), absl::InfinitePast());
  }
  if (pool_ == nullptr || pool_->num_threads() != static_cast<int>(placement_.shards.size())) {
    pool_ = std::make_unique<ThreadPool>(static_cast<int>(placement_.shards.size()));
  }
  return absl::OkStatus();
}

void ShardedExpertExecutor::SetStepContext(std::string request_id, int64_t step) {
  request_id_ = std::move(request_id);
  step_ = step;
}

absl::Status ShardedExpertExecutor::CheckShards(const model::ModelConfig& config,
                                                absl::Time deadline,
                                                std::string_view fingerprint) {
  for (const ExpertShard& shard : placement_.shards) {
    for (const ExpertTransportSharedPtr& replica : shard.replicas) {
      absl::StatusOr<ShardInfo> info = replica->GetShardInfo(deadline);
      absl::Status status = info.ok() ? CheckShardCompatible(*info, config,
                                                                     shard.expert_first,
                                                                     shard.expert_last,
                                                                     fingerprint)
                                      : info.status();
      if (!status.ok()) {
        return absl::Status(status.code(),
                            absl::StrCat(replica->address(), " (experts ",
                                         Range(shard.expert_first, shard.expert_last),
                                         "): ", status.message()));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ShardedExpertExecutor::RunExperts(int64_t layer, const float* hidden,
                                               int64_t num_tokens, int64_t hidden_size,
                                               const model::Routing& routing, float* slot_out) {
  const int64_t top_k = routing.top_k;
  const int64_t num_slots = num_tokens * top_k;
  if (routing.num_tokens != num_tokens || static_cast<int64_t>(routing.experts.size()) != num_slots) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", layer, ": routing covers ", routing.num_tokens, " tokens x ", top_k,
        " slots (", routing.experts.size(), " experts), expected ", num_tokens, " tokens"));
  }
  const std::vector<std::vector<int32_t>>* layer_holders = nullptr;
  if (!placement_.holders.empty()) {
    const int64_t index = layer - placement_.first_moe_layer;
    if (index < 0 || index >= static_cast<int64_t>(placement_.holders.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, ": the expert map covers MoE layers [", placement_.first_moe_layer,
          ", ", placement_.first_moe_layer + static_cast<int64_t>(placement_.holders.size()),
          ")"));
    }
    layer_holders = &placement_.holders[index];
  }
  // Load-aware dispatch: rows in flight to each shard from every lane, plus this call's.
  std::vector<int64_t> load(states_.size(), 0);
  for (size_t i = 0; i < states_.size(); ++i) {
    states_[i].slots.clear();
    states_[i].expert_ids.clear();
    if (layer_holders != nullptr) load[i] = outstanding_[i]->load(std::memory_order_relaxed);
  }
  for (int64_t j = 0; j < num_slots; ++j) {
    const int32_t e = routing.experts[j];
    if (e < 0 || e >= options_.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, ": routing slot ", j,
                                                     " names expert ", e, ", outside [0, ",
                                                     options_.num_experts, ")"));
    }
    int32_t shard = shard_of_expert_[e];
    if (layer_holders != nullptr) {
      const std::vector<int32_t>& holders = (*layer_holders)[e];
      shard = holders[0];
      for (size_t h = 1; h < holders.size(); ++h) {
        if (load[holders[h]] < load[shard]) shard = holders[h];  // sorted: ties keep the lowest
      }
      ++load[shard];
    }
    ShardState& state = states_[shard];
    state.slots.push_back(j);
    state.expert_ids.push_back(e);
  }
  if (options_.metrics) options_.metrics->RecordRouting(layer, routing.experts);
  std::vector<size_t> active;
  for (size_t i = 0; i < states_.size(); ++i) {
    if (!states_[i].slots.empty()) active.push_back(i);
  }
  for (size_t i : active) {
    outstanding_[i]->fetch_add(static_cast<int64_t>(states_[i].slots.size()),
                               std::memory_order_relaxed);
  }
  pool_->ParallelFor(static_cast<int64_t>(active.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      const auto start = std::chrono::steady_clock::now();
      Dispatch(active[a], states_[active[a]], layer, hidden, hidden_size, top_k);
      states_[active[a]].seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      outstanding_[active[a]]->fetch_sub(static_cast<int64_t>(states_[active[a]].slots.size()),
                                         std::memory_order_relaxed);
    }
  });

  for (ShardState& state : fallback_) {
    state.slots.clear();
    state.expert_ids.clear();
  }
  absl::Status first_error;
  for (size_t i : active) {
    ShardState& state = states_[i];
    stats_.failed_calls += state.failed_calls;
    state.failed_calls = 0;
    if (!state.status.ok()) {
      if (first_error.ok()) first_error = state.status;
      continue;
    }
    ++stats_.calls;
    stats_.rows += static_cast<int64_t>(state.slots.size());
    if (options_.metrics) {
      const ExpertShard& shard = placement_.shards[i];
      options_.metrics->RecordDispatch(
          absl::StrCat(shard.expert_first, "-", shard.expert_last), state.seconds);
    }
  }
  if (!first_error.ok() && layer_holders != nullptr) {
    first_error = FallBackToHome(active, layer, hidden, hidden_size, top_k);
  }
  if (!first_error.ok()) return first_error;
  const auto combine_start = std::chrono::steady_clock::now();
  const size_t row_bytes = static_cast<size_t>(hidden_size) * sizeof(float);
  for (const std::vector<ShardState>* states : {&states_, &fallback_}) {
    for (const ShardState& state : *states) {
      if (!state.status.ok()) continue;
      for (size_t r = 0; r < state.slots.size(); ++r) {
        std::memcpy(slot_out + state.slots[r] * hidden_size, &state.out[r * hidden_size],
                    row_bytes);
      }
    }
  }
  if (options_.metrics) {
    options_.metrics->RecordCombine(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - combine_start).count());
  }
  return absl::OkStatus();
}

absl::Status ShardedExpertExecutor::FallBackToHome(const std::vector<size_t>& active,
                                                   int64_t layer, const float* hidden,
                                                   int64_t hidden_size, int64_t top_k) {
  // Rows of the shard's own range have no other home: they are tried there once more (a
  // call that failed only for its other rows, say one of them was not loaded, then succeeds).
  std::vector<size_t> failed;
  for (size_t i : active) {
    if (!states_[i].status.ok()) failed.push_back(i);
  }
  for (size_t i : failed) {
    DMOE_LOG(WARNING) << "layer " << layer << ": " << states_[i].slots.size()
                      << " row(s) of shard " << i << " go to their home shards ("
                      << states_[i].status << ")";
    for (size_t r = 0; r < states_[i].slots.size(); ++r) {
      const int32_t e = states_[i].expert_ids[r];
      ShardState& home = fallback_[shard_of_expert_[e]];
      home.slots.push_back(states_[i].slots[r]);
      home.expert_ids.push_back(e);
    }
    states_[i].slots.clear();
    states_[i].expert_ids.clear();
  }
  for (size_t h = 0; h < fallback_.size(); ++h) {
    ShardState& state = fallback_[h];
    if (state.slots.empty()) continue;
    Dispatch(h, state, layer, hidden, hidden_size, top_k);
    stats_.failed_calls += state.failed_calls;
    state.failed_calls = 0;
    if (!state.status.ok()) return state.status;
    ++stats_.calls;
    stats_.rows += static_cast<int64_t>(state.slots.size());
  }
  for (size_t i : failed) states_[i].status = absl::OkStatus();  // its rows moved
  return absl::OkStatus();
}

void ShardedExpertExecutor::Dispatch(size_t index, ShardState& state, int64_t layer,
                                     const float* hidden, int64_t hidden_size, int64_t top_k) {
  const ExpertShard& shard = placement_.shards[index];
  // Replica health and the round-robin cursor are the shard's, whichever rows these are.
  ShardState& health = states_[index];
  const int64_t n = static_cast<int64_t>(state.slots.size());
  state.hidden.resize(static_cast<size_t>(n * hidden_size));
  state.out.resize(static_cast<size_t>(n * hidden_size));
  const size_t row_bytes = static_cast<size_t>(hidden_size) * sizeof(float);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t token = state.slots[r] / top_k;
    std::memcpy(&state.hidden[r * hidden_size], hidden + token * hidden_size, row_bytes);
  }
  const ExpertRows rows{.layer = layer,
                        .num_rows = n,
                        .hidden_size = hidden_size,
                        .hidden = state.hidden.data(),
                        .expert_ids = state.expert_ids.data(),
                        .request_id = request_id_,
                        .step = step_,
                        .placement_version = placement_.version};

  // Round robin over the replicas that are up, then (last resort) the ones marked down.
  const size_t num_replicas = shard.replicas.size();
  const size_t start = static_cast<size_t>(health.next_replica++ % num_replicas);
  const absl::Time now = absl::Now();
  std::vector<size_t> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < num_replicas; ++i) {
      const size_t r = (start + i) % num_replicas;
      if ((health.down_until[r] <= now) == (pass == 0)) order.push_back(r);
    }
  }
  const std::string what =
      absl::StrCat("layer ", layer, " experts ", Range(shard.expert_first, shard.expert_last));
  std::vector<std::string> failures;
  for (size_t r : order) {
    ExpertTransport& replica = *shard.replicas[r];
    absl::Status status =
        replica.RunExperts(rows, std::min(absl::Now() + options_.call_timeout, step_deadline_),
                           state.out.data());
    if (status.ok()) {
      health.down_until[r] = absl::InfinitePast();
      state.status = absl::OkStatus();
      return;
    }
    ++state.failed_calls;
    if (!IsRetriable(status.code())) {
      state.status = absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
      return;
    }
    health.down_until[r] = absl::Now() + options_.replica_backoff;
    DMOE_LOG(WARNING) << what << ": replica " << replica.address() << " failed ("
                      << status.ToString() << "); trying the next replica";
    failures.push_back(status.ToString());
  }
  state.status = absl::UnavailableError(absl::StrCat(
      "layer ", layer, ": no live replica for experts ", Range(shard.expert_first, shard.expert_last),
      " (", num_replicas, " tried: ", absl::StrJoin(failures, "; "), ")"));
}

}  // namespace dmoe::transport
