// DeviceAttention over gpu::CudaModel with a host expert hook (see device_attention.h).
#include "attention_service/device_attention.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/device_worker.h"

namespace dmoe::attention {
namespace {

// The device objects are owned by the DeviceWorker thread (STYLE.md §8): created, used and
// destroyed only inside worker_->Run, one item at a time, so they need no lock.
class CudaAttention final : public DeviceAttention {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceAttention>> Create(
      const model::ModelConfig& config, const model::ModelWeights& weights,
      const DeviceAttentionOptions& options, model::ExpertExecutor* experts) {
    if (options.kv_page_tokens < 1 || options.kv_max_pages < 1 || options.max_rows < 1 ||
        options.max_segments < 1 || options.max_queue < 1 || options.device < 0) {
      return absl::InvalidArgumentError("CreateCudaAttention: sizes must be positive");
    }
    auto a = std::unique_ptr<CudaAttention>(new CudaAttention(options));
    DMOE_ASSIGN_OR_RETURN(a->worker_, gpu::CreateDeviceWorkerForFlag(
                                          {.device = options.device, .max_queue = options.max_queue}));
    const int64_t max_pages_per_segment =
        std::min(options.kv_max_pages,
                 (config.max_position_embeddings + options.kv_page_tokens - 1) /
                     options.kv_page_tokens);
    absl::Status s = a->worker_->Run([&](gpu::DeviceContext& ctx) -> absl::Status {
      DMOE_ASSIGN_OR_RETURN(a->weights_, gpu::CudaWeights::Upload(config, weights));
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
      a->pool_ = *std::move(pool);
      DMOE_ASSIGN_OR_RETURN(
          a->model_, gpu::CudaModel::Create(*a->weights_, a->pool_.get(),
                                            {.max_rows = options.max_rows,
                                             .max_segments = options.max_segments,
                                             .max_pages_per_segment = max_pages_per_segment,
                                             .host_experts = experts},
                                            ctx));
      DMOE_LOG(INFO) << "--device cuda: GPU " << ctx.device << " holds "
                     << a->weights_->AllocatedBytes() / (1 << 20) << " MiB of weights and "
                     << options.kv_max_pages << " KV pages of " << options.kv_page_tokens
                     << " tokens; routed experts "
                     << (experts ? "go to the expert executor" : "run on the device");
      return absl::OkStatus();
    });
    if (!s.ok()) return s;  // the destructor frees what was created, on the device thread
    return std::unique_ptr<DeviceAttention>(std::move(a));
  }

  ~CudaAttention() override {
    if (worker_ == nullptr) return;
    absl::Status s = worker_->Run([this](gpu::DeviceContext&) {
      sequences_.clear();
      model_.reset();
      pool_.reset();
      weights_.reset();
      return absl::OkStatus();
    });
    if (!s.ok()) DMOE_LOG(ERROR) << "freeing the device attention: " << s;
    worker_.reset();  // joins the device thread
  }

  absl::StatusOr<std::vector<engine::Proposal>> Step(
      const std::vector<SegmentRequest>& segments) override {
    for (const SegmentRequest& s : segments) {
      if (static_cast<int64_t>(s.plan.tokens.size()) > options_.max_rows) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence '", s.sequence_id, "': a forward of ", s.plan.tokens.size(),
            " tokens exceeds the device forward's max_rows ", options_.max_rows));
      }
    }
    std::vector<engine::Proposal> proposals(segments.size());
    absl::Status status = worker_->Run([&](gpu::DeviceContext&) -> absl::Status {
      absl::Status s = StepOnDevice(segments, proposals);
      UpdateCounters();
      return s;
    });
    if (gpu::IsStickyStatus(status)) {
      // STYLE.md §5: the context is unusable; exit and let the supervisor restart the pod.
      DMOE_LOG(FATAL) << "--device cuda: " << status;
    }
    if (!status.ok()) return status;
    return proposals;
  }

  int64_t Release(const std::vector<std::string>& sequence_ids) override {
    int64_t released = 0;
    absl::Status s = worker_->Run([&](gpu::DeviceContext&) {
      for (const std::string& id : sequence_ids) released += sequences_.erase(id);
      UpdateCounters();
      return absl::OkStatus();
    });
    if (!s.ok()) DMOE_LOG(WARNING) << "releasing " << sequence_ids.size() << " sequence(s): " << s;
    return released;
  }

  int64_t pages_in_use() const override { return pages_in_use_.load(); }
  int64_t sequences() const override { return sequences_count_.load(); }

 private:
  explicit CudaAttention(const DeviceAttentionOptions& options) : options_(options) {}

  void UpdateCounters() {
    pages_in_use_.store(pool_ != nullptr ? pool_->pages_in_use() : 0);
    sequences_count_.store(static_cast<int64_t>(sequences_.size()));
  }

  // On the device thread: each plan maps to a CudaForwardSegment exactly as
  // engine::ExecutePlans maps it to a model::ForwardSegment.
  absl::Status StepOnDevice(const std::vector<SegmentRequest>& segments,
                            std::vector<engine::Proposal>& proposals) {
    std::vector<gpu::CudaKvSequence*> caches(segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      const SegmentRequest& s = segments[i];
      auto& kv = sequences_[s.sequence_id];
      if (kv == nullptr) kv = std::make_unique<gpu::CudaKvSequence>(pool_.get());
      if (s.reset_cache) kv->Clear();
      DMOE_RETURN_IF_ERROR(CheckCachedLength(s, kv->length()));
      caches[i] = kv.get();
    }
    // Rows of a plan that samples bring their logits to the host (4 x vocab bytes each):
    // bounded per forward so host memory stays bounded.
    constexpr int64_t kMaxSampledRowsPerForward = 256;
    auto sampled_rows = [](const engine::StepPlan& plan) -> int64_t {
      return plan.sampling.IsPlainGreedy()
                 ? 0
                 : static_cast<int64_t>(plan.tokens.size()) - plan.logits_from;
    };
    size_t begin = 0;
    while (begin < segments.size()) {
      size_t end = begin;
      int64_t rows = 0, sampled = 0;
      while (end < segments.size() &&
             static_cast<int64_t>(end - begin) < options_.max_segments &&
             (end == begin ||
              (rows + static_cast<int64_t>(segments[end].plan.tokens.size()) <= options_.max_rows &&
               sampled + sampled_rows(segments[end].plan) <= kMaxSampledRowsPerForward))) {
        rows += static_cast<int64_t>(segments[end].plan.tokens.size());
        sampled += sampled_rows(segments[end].plan);
        ++end;
      }
      std::vector<gpu::CudaForwardSegment> batch(end - begin);
      for (size_t i = begin; i < end; ++i) {
        const engine::StepPlan& plan = segments[i].plan;
        batch[i - begin] = {.kv = caches[i],
                            .start = plan.start,
                            .tokens = plan.tokens,
                            .persist = plan.persist,
                            .attention_block = plan.attention_block,
                            .logits_from = plan.logits_from,
                            // Sampling runs on the host, over the rows' logits.
                            .return_logits = !plan.sampling.IsPlainGreedy()};
      }
      absl::StatusOr<std::vector<gpu::CudaProposals>> out = model_->Forward(batch);
      if (!out.ok()) {
        // As the CPU engine: a failed step leaves no half-persisted cache behind.
        for (size_t i = 0; i < segments.size(); ++i) {
          if (caches[i]->length() != segments[i].plan.start) caches[i]->Clear();
        }
        return out.status();
      }
      const int64_t vocab = weights_->config().vocab_size;
      for (size_t i = begin; i < end; ++i) {
        gpu::CudaProposals& p = (*out)[i - begin];
        const engine::StepPlan& plan = segments[i].plan;
        if (batch[i - begin].return_logits) {
          // The CPU engine's own sampler (same counter-based RNG), so a sampled request gets
          // the tokens it would get on the CPU up to the logits' rounding. It runs here, on the
          // device thread, because the step waits for it either way and the logits of the next
          // forward reuse no memory of this one.
          proposals[i] = engine::SampleRows(p.logits.data(), static_cast<int64_t>(p.ids.size()),
                                            vocab, plan.sampling, plan.stream);
        } else {
          proposals[i] = {.tokens = std::move(p.ids), .confidence = std::move(p.confidence)};
        }
      }
      begin = end;
    }
    return absl::OkStatus();
  }

  const DeviceAttentionOptions options_;
  std::unique_ptr<gpu::DeviceWorker> worker_;
  std::atomic<int64_t> pages_in_use_{0};
  std::atomic<int64_t> sequences_count_{0};
  // Owned by the DeviceWorker thread.
  std::unique_ptr<gpu::CudaWeights> weights_;
  std::unique_ptr<gpu::CudaKvPool> pool_;
  std::unique_ptr<gpu::CudaModel> model_;
  std::map<std::string, std::unique_ptr<gpu::CudaKvSequence>> sequences_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceAttention>> CreateCudaAttention(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const DeviceAttentionOptions& options, model::ExpertExecutor* experts) {
  return CudaAttention::Create(config, weights, options, experts);
}

}  // namespace dmoe::attention
