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
  void SetStepDeadline(absl::Time deadline) override { deadline_ = deadline; }

  explicit FollowingExecutor(ClusterExperts& cluster) : cluster_(cluster) {}

  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t num_tokens,
                          int64_t hidden_size, const model::Routing& routing,
                          float* slot_out) override {
    const uint64_t version = cluster_.version();
    if (version == 0) {
      return absl::UnavailableError("no complete expert placement yet (waiting for expert pods)");
    }
    if (!executor_ || version != version_) {
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
    executor_->SetStepDeadline(deadline_);
    return executor_->RunExperts(layer, hidden, num_tokens, hidden_size, routing, slot_out);
  }

 private:
  ClusterExperts& cluster_;
  absl::Time deadline_ = absl::InfiniteFuture();
  uint64_t version_ = 0;
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
  if (absl::Status s = next.Validate(num_experts_); !s.ok()) {
    DMOE_LOG(WARNING) << "ignoring expert placement v" << placement.version << ": " << s;
    return;
  }
  DMOE_LOG(INFO) << "expert placement v" << placement.version << ": " << next.shards.size()
                 << " shard(s)";
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

std::unique_ptr<model::ExpertExecutor> ClusterExperts::NewExecutor() {
  return std::make_unique<FollowingExecutor>(*this);
}

}  // namespace dmoe::attention
