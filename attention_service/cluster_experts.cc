#include "attention_service/cluster_experts.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "attention_service/attention_engine.h"
#include "transport/grpc_expert_transport.h"

namespace dmoe::attention {
namespace {

// Follows ClusterExperts' placement; UNAVAILABLE while no complete placement is known.
class FollowingExecutor : public model::ExpertExecutor, public StepDeadlineAware {
 public:
  void SetStepDeadline(absl::Time deadline) override {
    deadline_ = deadline;
    step_started_ = true;  // a step boundary: the next layer may switch placements
  }

  explicit FollowingExecutor(ClusterExperts& cluster) : cluster_(cluster) {}

  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t num_tokens,
                          int64_t hidden_size, const model::Routing& routing,
                          float* slot_out) override {
    const uint64_t version = cluster_.version();
    if (version == 0) {
      return absl::UnavailableError("no complete expert placement yet (waiting for expert pods)");
    }
    if (!executor_ || (version != version_ && step_started_)) {
      transport::ExpertPlacement placement = cluster_.Current();
      if (!executor_) {
        auto created = transport::ShardedExpertExecutor::Create(
            {.num_experts = cluster_.num_experts(), .metrics = cluster_.metrics()},
            std::move(placement));
        if (!created.ok()) return created.status();
        executor_ = *std::move(created);
      } else if (absl::Status s = executor_->SetPlacement(std::move(placement)); !s.ok()) {
        return s;
      }
      version_ = version;
    }
    step_started_ = false;
    cluster_.CountRouting(layer, routing.experts);
    executor_->SetStepDeadline(deadline_);
    return executor_->RunExperts(layer, hidden, num_tokens, hidden_size, routing, slot_out);
  }

 private:
  ClusterExperts& cluster_;
  absl::Time deadline_ = absl::InfiniteFuture();
  uint64_t version_ = 0;
  bool step_started_ = true;
  std::unique_ptr<transport::ShardedExpertExecutor> executor_;
};

}  // namespace

void ClusterExperts::Update(const cluster::Placement& placement) {
  if (!placement.complete) {
    DMOE_LOG(WARNING) << "expert placement v" << placement.version
                      << " does not cover every expert; keeping v" << version();
    return;
  }
  absl::MutexLock lock(&mu_);
  transport::ExpertPlacement next;
  next.version = placement.version;
  for (const cluster::ShardPlacement& shard : placement.shards) {
    transport::ExpertShard s{shard.expert_first, shard.expert_last, {}};
    auto& outstanding = outstanding_[absl::StrCat(shard.expert_first, "-", shard.expert_last)];
    if (!outstanding) outstanding = std::make_shared<std::atomic<int64_t>>(0);
    next.outstanding.push_back(outstanding);
    for (const std::string& address : shard.replicas) {
      auto& transport = transports_[address];
      if (!transport) {
        auto created = transport::GrpcExpertTransport::Create({.target = address});
        if (!created.ok()) {
          DMOE_LOG(ERROR) << "expert transport to " << address << ": " << created.status();
          continue;
        }
        transport = *std::move(created);
        if (wrap_) transport = wrap_(std::move(transport));
      }
      s.replicas.push_back(transport);
    }
    next.shards.push_back(std::move(s));
  }
  next.first_moe_layer = placement.first_moe_layer;
  next.holders = placement.layers;
  if (absl::Status s = next.Validate(num_experts_); !s.ok()) {
    DMOE_LOG(WARNING) << "ignoring expert placement v" << placement.version << ": " << s;
    return;
  }
  int64_t redundant = 0;
  for (const auto& layer : next.holders) {
    for (int64_t e = 0; e < static_cast<int64_t>(layer.size()); ++e) {
      for (int32_t h : layer[e]) {
        const transport::ExpertShard& shard = next.shards[h];
        redundant += e < shard.expert_first || e >= shard.expert_last;
      }
    }
  }
  DMOE_LOG(INFO) << "expert placement v" << placement.version << ": " << next.shards.size()
                 << " shard(s)"
                 << (next.holders.empty()
                         ? std::string()
                         : absl::StrCat(", expert map with ", redundant,
                                        " expert(s) outside their shard's range"));
  current_ = std::move(next);
}

transport::ExpertPlacement ClusterExperts::Current() {
  absl::MutexLock lock(&mu_);
  return current_;
}

uint64_t ClusterExperts::version() {
  absl::MutexLock lock(&mu_);
  return current_.version;
}

void ClusterExperts::EnableLoadCounting(int64_t first_moe_layer, int64_t num_moe_layers) {
  first_moe_layer_ = first_moe_layer;
  num_moe_layers_ = num_moe_layers;
  const int64_t n = num_moe_layers * num_experts_;
  tokens_ = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens_[i] = 0;
}

void ClusterExperts::CountRouting(int64_t layer, const std::vector<int32_t>& experts) {
  const int64_t index = layer - first_moe_layer_;
  if (!tokens_ || index < 0 || index >= num_moe_layers_) return;
  std::atomic<int64_t>* row = &tokens_[index * num_experts_];
  for (int32_t e : experts) {
    if (e >= 0 && e < num_experts_) row[e].fetch_add(1, std::memory_order_relaxed);
  }
}

std::vector<int64_t> ClusterExperts::TakeExpertTokens() {
  if (!tokens_) return {};
  const int64_t n = num_moe_layers_ * num_experts_;
  std::vector<int64_t> out(static_cast<size_t>(n));
  bool any = false;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = tokens_[i].exchange(0, std::memory_order_relaxed);
    any = any || out[i] != 0;
  }
  if (!any) out.clear();
  return out;
}

std::unique_ptr<model::ExpertExecutor> ClusterExperts::NewExecutor() {
  return std::make_unique<FollowingExecutor>(*this);
}

}  // namespace dmoe::attention
