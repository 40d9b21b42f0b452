// CudaStepExecutor: scheduler::StepExecutor over gpu::CudaModel (see cuda_step_executor.h).
#include "scheduler/cuda_step_executor.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_worker.h"

namespace dmoe::scheduler {
namespace {

bool IsSticky(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInternal && absl::StrContains(s.message(), "sticky");
}

// Thread-safe: every call hands its device work to the DeviceWorker and waits for it; the
// device objects below are owned by the DeviceWorker thread (STYLE.md §8): created, used and
// destroyed only inside worker_->Run, which runs one item at a time, so they need no lock.
class CudaStepExecutor final : public StepExecutor {
 public:
  static absl::StatusOr<std::unique_ptr<StepExecutor>> Create(
      const model::ModelConfig& config, const model::ModelWeights& weights,
      const CudaStepExecutorOptions& options) {
    DMOE_RETURN_IF_ERROR(options.Validate());
    auto e = std::unique_ptr<CudaStepExecutor>(new CudaStepExecutor(options));
    absl::StatusOr<std::unique_ptr<gpu::DeviceWorker>> worker =
        gpu::DeviceWorker::Create({.device = options.device, .max_queue = options.max_queue});
    if (!worker.ok()) {
      return absl::Status(worker.status().code(),
                          absl::StrCat("--device cuda: cannot use GPU ", options.device, ": ",
                                       worker.status().message()));
    }
    e->worker_ = *std::move(worker);
    const int64_t max_pages_per_segment =
        std::min(options.kv_max_pages,
                 (config.max_position_embeddings + options.kv_page_tokens - 1) /
                     options.kv_page_tokens);
    absl::Status s = e->worker_->Run([&](gpu::DeviceContext& ctx) -> absl::Status {
      DMOE_ASSIGN_OR_RETURN(e->weights_, gpu::CudaWeights::Upload(config, weights));
      absl::StatusOr<std::unique_ptr<gpu::CudaKvPool>> pool =
          gpu::CudaKvPool::Create({.num_layers = config.num_hidden_layers,
                                   .kv_width = config.kv_width(),
                                   .page_tokens = options.kv_page_tokens},
                                  options.kv_max_pages);
      if (!pool.ok()) {
        return absl::Status(pool.status().code(),
                            absl::StrCat("device KV pool of ", options.kv_max_pages,
                                         " pages (--kv-pages): ", pool.status().message()));
      }
      e->pool_ = *std::move(pool);
      DMOE_ASSIGN_OR_RETURN(
          e->model_, gpu::CudaModel::Create(*e->weights_, e->pool_.get(),
                                            {.max_rows = options.max_rows,
                                             .max_segments = options.max_segments,
                                             .max_pages_per_segment = max_pages_per_segment},
                                            ctx));
      DMOE_LOG(INFO) << "--device cuda: GPU " << ctx.device << " holds "
                     << e->weights_->AllocatedBytes() / (1 << 20) << " MiB of weights and "
                     << options.kv_max_pages << " KV pages of " << options.kv_page_tokens
                     << " tokens";
      return absl::OkStatus();
    });
    if (!s.ok()) return s;  // the destructor frees what was created, on the device thread
    return std::unique_ptr<StepExecutor>(std::move(e));
  }

  ~CudaStepExecutor() override {
    if (worker_ == nullptr) return;
    absl::Status s = worker_->Run([this](gpu::DeviceContext&) {
      sequences_.clear();
      model_.reset();
      pool_.reset();
      weights_.reset();
      return absl::OkStatus();
    });
    if (!s.ok()) DMOE_LOG(ERROR) << "freeing the device executor: " << s;
    worker_.reset();  // joins the device thread
  }

  absl::Status CheckParams(const engine::GenerationParams& params) const override {
    return CheckDeviceSampling(params.sampling);
  }

  absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<SequenceStep>& steps) override {
    // Everything that can be refused is refused here, before the device sees the step.
    std::set<std::string> seen;
    for (size_t i = 0; i < steps.size(); ++i) {
      const SequenceStep& s = steps[i];
      if (s.sequence_id.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("steps[", i, "].sequence_id is empty"));
      }
      if (!seen.insert(s.sequence_id).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence '", s.sequence_id, "' appears twice in one step"));
      }
      DMOE_RETURN_IF_ERROR(s.plan.sampling.Validate());
      DMOE_RETURN_IF_ERROR(CheckDeviceSampling(s.plan.sampling));
      if (static_cast<int64_t>(s.plan.tokens.size()) > options_.max_rows) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence '", s.sequence_id, "': a forward of ", s.plan.tokens.size(),
            " tokens exceeds the device executor's max_rows ", options_.max_rows));
      }
    }
    std::vector<engine::Proposal> proposals(steps.size());
    absl::Status status = worker_->Run([&](gpu::DeviceContext&) -> absl::Status {
      return ExecuteOnDevice(steps, proposals);
    });
    if (IsSticky(status)) {
      // STYLE.md §5: the context is unusable; exit and let the supervisor restart the pod.
      DMOE_LOG(FATAL) << "--device cuda: " << status;
    }
    if (!status.ok()) return status;
    return proposals;
  }

  void Release(const std::vector<std::string>& sequence_ids) override {
    absl::Status s = worker_->Run([&](gpu::DeviceContext&) {
      for (const std::string& id : sequence_ids) sequences_.erase(id);  // frees its pages
      return absl::OkStatus();
    });
    if (!s.ok()) DMOE_LOG(WARNING) << "releasing " << sequence_ids.size() << " sequence(s): " << s;
  }

  int64_t KvPagesCapacity() override { return options_.kv_max_pages; }

 private:
  explicit CudaStepExecutor(const CudaStepExecutorOptions& options) : options_(options) {}

  // On the device thread. Maps each plan to a CudaForwardSegment exactly as
  // engine::ExecutePlans maps it to a model::ForwardSegment, runs the batch as one forward
  // (several when it exceeds max_rows / max_segments) and fills `proposals`.
  absl::Status ExecuteOnDevice(const std::vector<SequenceStep>& steps,
                               std::vector<engine::Proposal>& proposals) {
    std::vector<gpu::CudaKvSequence*> caches(steps.size());
    for (size_t i = 0; i < steps.size(); ++i) {
      auto& kv = sequences_[steps[i].sequence_id];
      if (kv == nullptr) kv = std::make_unique<gpu::CudaKvSequence>(pool_.get());
      if (steps[i].reset_cache) kv->Clear();
      caches[i] = kv.get();
    }
    for (size_t i = 0; i < steps.size(); ++i) {
      if (caches[i]->length() != steps[i].plan.start) {
        // The scheduler re-plans the batch with reset_cache (LocalStepExecutor's contract).
        return absl::AbortedError(absl::StrCat(
            "sequence '", steps[i].sequence_id, "': the device caches ", caches[i]->length(),
            " positions but the plan starts at ", steps[i].plan.start,
            "; re-plan with reset_cache"));
      }
    }
    size_t begin = 0;
    while (begin < steps.size()) {
      // Greedy packing in request order; every plan alone fits max_rows (checked above).
      size_t end = begin;
      int64_t rows = 0;
      while (end < steps.size() && static_cast<int64_t>(end - begin) < options_.max_segments &&
             (end == begin ||
              rows + static_cast<int64_t>(steps[end].plan.tokens.size()) <= options_.max_rows)) {
        rows += static_cast<int64_t>(steps[end].plan.tokens.size());
        ++end;
      }
      std::vector<gpu::CudaForwardSegment> segments(end - begin);
      for (size_t i = begin; i < end; ++i) {
        const engine::StepPlan& plan = steps[i].plan;
        segments[i - begin] = {.kv = caches[i],
                               .start = plan.start,
                               .tokens = plan.tokens,
                               .persist = plan.persist,
                               .attention_block = plan.attention_block,
                               .logits_from = plan.logits_from};
      }
      absl::StatusOr<std::vector<gpu::CudaProposals>> out = model_->Forward(segments);
      if (!out.ok()) {
        // As AttentionEngine::Step: a failed step leaves no half-persisted cache behind; a
        // sequence whose cache moved is cleared, and its next plan re-prefills.
        for (size_t i = 0; i < steps.size(); ++i) {
          if (caches[i]->length() != steps[i].plan.start) caches[i]->Clear();
        }
        return out.status();
      }
      for (size_t i = begin; i < end; ++i) {
        gpu::CudaProposals& p = (*out)[i - begin];
        proposals[i] = {.tokens = std::move(p.ids), .confidence = std::move(p.confidence)};
      }
      begin = end;
    }
    return absl::OkStatus();
  }

  const CudaStepExecutorOptions options_;
  std::unique_ptr<gpu::DeviceWorker> worker_;
  // Owned by the DeviceWorker thread.
  std::unique_ptr<gpu::CudaWeights> weights_;
  std::unique_ptr<gpu::CudaKvPool> pool_;
  std::unique_ptr<gpu::CudaModel> model_;
  std::map<std::string, std::unique_ptr<gpu::CudaKvSequence>> sequences_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StepExecutor>> CreateCudaStepExecutor(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const CudaStepExecutorOptions& options) {
  return CudaStepExecutor::Create(config, weights, options);
}

}  // namespace dmoe::scheduler
