#include "attention_service/attention_engine.h"

#include <chrono>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "attention_service/device_attention.h"
#include "common/logging.h"
#include "common/gpu_index.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "model/cpu/make_kernels.h"

namespace dmoe::attention {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Measures the time a forward spends in expert dispatch/combine.
class TimedExecutor : public model::ExpertExecutor {
 public:
  explicit TimedExecutor(std::unique_ptr<model::ExpertExecutor> inner) : inner_(std::move(inner)) {}
  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t n, int64_t h,
                          const model::Routing& routing, float* out) override {
    auto t0 = std::chrono::steady_clock::now();
    absl::Status s = inner_->RunExperts(layer, hidden, n, h, routing, out);
    seconds += Seconds(t0);
    if (!s.ok()) failed = true;
    return s;
  }
  void SetStepDeadline(absl::Time deadline) {
    if (auto* aware = dynamic_cast<StepDeadlineAware*>(inner_.get())) aware->SetStepDeadline(deadline);
  }
  double seconds = 0;
  bool failed = false;

 private:
  std::unique_ptr<model::ExpertExecutor> inner_;
};

}  // namespace

struct AttentionEngine::Lane {
  model::KernelsPtr kernels;
  std::unique_ptr<TimedExecutor> experts;
};

AttentionEngine::~AttentionEngine() = default;

absl::Status AttentionEngineOptions::Validate() const {
  if (micro_batches < 1 || micro_batches > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("micro_batches must be in [1, 8], got ", micro_batches));
  }
  if (kv_page_tokens <= 0 || kv_max_pages <= 0) {
    return absl::InvalidArgumentError("kv_page_tokens and kv_max_pages must be positive");
  }
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be \"cpu\" or \"cuda\", got \"", device, "\""));
  }
  DMOE_RETURN_IF_ERROR(ValidateGpuFlag(cuda_device));
  return absl::OkStatus();
}

AttentionEngine::AttentionEngine(const AttentionEngineOptions& options, const model::Model& model)
    : options_(options),
      model_(model),
      pool_(model.KvOptions(options.kv_page_tokens, options.kv_max_pages)) {}

absl::StatusOr<std::unique_ptr<AttentionEngine>> AttentionEngine::Create(
    const AttentionEngineOptions& options, const model::Model& model,
    const ExpertExecutorFactory& experts) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto engine = std::unique_ptr<AttentionEngine>(new AttentionEngine(options, model));
  int threads = options.num_threads > 0 ? options.num_threads
                                        : static_cast<int>(std::thread::hardware_concurrency());
  const bool cuda = options.device == "cuda";
  if (cuda && options.micro_batches > 1) {
    DMOE_LOG(INFO) << "--device cuda: one micro-batch per step (" << options.micro_batches
                   << " requested): the device runs one forward at a time";
    engine->options_.micro_batches = 1;
  }
  const int lanes = engine->options_.micro_batches;
  const int per_lane = std::max(1, threads / lanes);
  for (int i = 0; i < lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    DMOE_ASSIGN_OR_RETURN(lane->kernels, model::MakeKernels(options.kernels, per_lane));
    lane->experts = std::make_unique<TimedExecutor>(experts(*lane->kernels));
    engine->lanes_.push_back(std::move(lane));
  }
  if (cuda) {
    DMOE_ASSIGN_OR_RETURN(
        engine->device_,
        CreateCudaAttention(model.config(), model.weights(),
                            {.device = options.cuda_device,
                             .kv_page_tokens = options.kv_page_tokens,
                             .kv_max_pages = options.kv_max_pages},
                            engine->lanes_[0]->experts.get()));
  }
  return engine;
}

absl::Status ValidateSegments(const std::vector<SegmentRequest>& segments) {
  std::set<std::string> seen;
  for (size_t i = 0; i < segments.size(); ++i) {
    const SegmentRequest& s = segments[i];
    if (s.sequence_id.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("segments[", i, "].sequence_id is empty"));
    }
    if (!seen.insert(s.sequence_id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence '", s.sequence_id, "' appears twice in one step"));
    }
    DMOE_RETURN_IF_ERROR(s.plan.sampling.Validate());
  }
  return absl::OkStatus();
}

absl::Status CheckCachedLength(const SegmentRequest& segment, int64_t cached_length) {
  if (cached_length == segment.plan.start) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "sequence '", segment.sequence_id, "': this replica caches ", cached_length,
      " positions but the plan starts at ", segment.plan.start, "; re-plan with reset_cache"));
}

absl::StatusOr<std::vector<engine::Proposal>> AttentionEngine::Step(
    const std::vector<SegmentRequest>& segments, StepTimings* timings, absl::Time deadline) {
  absl::MutexLock step_lock(&step_mu_);
  if (device_ != nullptr) return DeviceStep(segments, timings, deadline);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<model::KvSequence*> caches(segments.size());
  {
    absl::MutexLock lock(&sequences_mu_);
    DMOE_RETURN_IF_ERROR(ValidateSegments(segments));
    for (size_t i = 0; i < segments.size(); ++i) {
      const SegmentRequest& s = segments[i];
      auto& kv = sequences_[s.sequence_id];
      if (!kv) kv = std::make_unique<model::KvSequence>(&pool_);
      if (s.reset_cache) kv->Clear();
      DMOE_RETURN_IF_ERROR(CheckCachedLength(s, kv->length()));
      caches[i] = kv.get();
    }
  }

  // Micro-batches balanced by token count, each on its own lane.
  const size_t lanes = std::min(lanes_.size(), std::max<size_t>(1, segments.size()));
  std::vector<std::vector<size_t>> groups(lanes);
  std::vector<int64_t> load(lanes, 0);
  for (size_t i = 0; i < segments.size(); ++i) {
    size_t g = std::min_element(load.begin(), load.end()) - load.begin();
    groups[g].push_back(i);
    load[g] += static_cast<int64_t>(segments[i].plan.tokens.size());
  }
  std::vector<absl::StatusOr<std::vector<engine::Proposal>>> results(
      lanes, absl::UnknownError("not run"));
  auto run_group = [&](size_t g) {
    std::vector<engine::StepPlan> plans;
    std::vector<model::KvSequence*> kv;
    for (size_t i : groups[g]) {
      plans.push_back(segments[i].plan);
      kv.push_back(caches[i]);
    }
    Lane& lane = *lanes_[g];
    results[g] = engine::ExecutePlans(model_, *lane.kernels, *lane.experts, plans, kv);
  };
  for (auto& lane : lanes_) {
    lane->experts->seconds = 0;
    lane->experts->failed = false;
    lane->experts->SetStepDeadline(deadline);
  }
  if (lanes == 1) {
    run_group(0);
  } else {
    std::vector<std::thread> threads;
    for (size_t g = 1; g < lanes; ++g) threads.emplace_back(run_group, g);
    run_group(0);
    for (auto& t : threads) t.join();
  }
  std::vector<engine::Proposal> proposals(segments.size());
  for (size_t g = 0; g < lanes; ++g) {
    if (!results[g].ok()) {
      // Roll back what the successful lanes persisted, so the scheduler can simply retry.
      for (size_t i = 0; i < segments.size(); ++i) {
        if (caches[i]->length() != segments[i].plan.start) {
          caches[i]->Clear();  // the next plan gets FAILED_PRECONDITION and re-prefills
        }
      }
      if (timings) {
        for (auto& lane : lanes_) timings->expert_failure |= lane->experts->failed;
      }
      return results[g].status();
    }
    for (size_t j = 0; j < groups[g].size(); ++j) proposals[groups[g][j]] = std::move((*results[g])[j]);
  }
  if (timings) {
    timings->forward_seconds = Seconds(t0);
    timings->lanes = static_cast<int>(lanes);
    for (auto& lane : lanes_) timings->expert_seconds += lane->experts->seconds;
  }
  return proposals;
}

absl::StatusOr<std::vector<engine::Proposal>> AttentionEngine::DeviceStep(
    const std::vector<SegmentRequest>& segments, StepTimings* timings, absl::Time deadline) {
  const auto t0 = std::chrono::steady_clock::now();
  DMOE_RETURN_IF_ERROR(ValidateSegments(segments));
  TimedExecutor& experts = *lanes_[0]->experts;
  experts.seconds = 0;
  experts.failed = false;
  experts.SetStepDeadline(deadline);
  absl::StatusOr<std::vector<engine::Proposal>> result = device_->Step(segments);
  if (timings) {
    timings->expert_failure |= !result.ok() && experts.failed;
    timings->forward_seconds = Seconds(t0);
    timings->expert_seconds = experts.seconds;
  }
  return result;
}

int64_t AttentionEngine::Release(const std::vector<std::string>& sequence_ids) {
  absl::MutexLock step_lock(&step_mu_);  // a running step may hold these caches
  if (device_ != nullptr) return device_->Release(sequence_ids);
  absl::MutexLock lock(&sequences_mu_);
  int64_t released = 0;
  for (const std::string& id : sequence_ids) released += sequences_.erase(id);
  return released;
}

AttentionInfo AttentionEngine::Info() const {
  if (device_ != nullptr) {
    return {.kv_pages_total = options_.kv_max_pages,
            .kv_pages_used = device_->pages_in_use(),
            .sequences = device_->sequences()};
  }
  absl::MutexLock lock(&sequences_mu_);
  return {.kv_pages_total = options_.kv_max_pages,
          .kv_pages_used = pool_.pages_in_use(),
          .sequences = static_cast<int64_t>(sequences_.size())};
}

}  // namespace dmoe::attention
