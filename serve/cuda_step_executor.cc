// CudaStepExecutor: the scheduler's StepExecutor over attention::DeviceAttention, the GPU
// forward an attention replica uses too (here without an expert hook: the device computes the
// routed experts from the weights it holds). This adapter only validates, maps the scheduler's
// steps to segments, and turns a stale cache into ABORTED (the scheduler's re-prefill signal).
#include "serve/cuda_step_executor.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention_service/device_attention.h"
#include "common/status_macros.h"

namespace dmoe::serve {
namespace {

class CudaStepExecutor final : public scheduler::StepExecutor {
 public:
  CudaStepExecutor(const CudaStepExecutorOptions& options,
                   std::unique_ptr<attention::DeviceAttention> device)
      : options_(options), device_(std::move(device)) {}

  absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<scheduler::SequenceStep>& steps) override {
    std::vector<attention::SegmentRequest> segments;
    segments.reserve(steps.size());
    for (const scheduler::SequenceStep& s : steps) segments.push_back({s.sequence_id, s.plan, s.reset_cache});
    // Everything that can be refused is refused here, before the device sees the step.
    DMOE_RETURN_IF_ERROR(attention::ValidateSegments(segments));
    absl::StatusOr<std::vector<engine::Proposal>> proposals = device_->Step(segments);
    if (proposals.status().code() == absl::StatusCode::kFailedPrecondition) {
      // The device no longer caches what the plan extends: the scheduler re-plans the batch
      // with reset_cache (LocalStepExecutor's contract).
      return absl::AbortedError(proposals.status().message());
    }
    return proposals;
  }

  void Release(const std::vector<std::string>& sequence_ids) override {
    device_->Release(sequence_ids);
  }

  int64_t KvPagesCapacity() override { return options_.kv_max_pages; }

 private:
  const CudaStepExecutorOptions options_;
  std::unique_ptr<attention::DeviceAttention> device_;
};

}  // namespace

absl::Status CudaStepExecutorOptions::Validate() const {
  auto at_least = [](const char* field, int64_t value, int64_t min) {
    return value >= min ? absl::OkStatus()
                        : absl::InvalidArgumentError(
                              absl::StrCat(field, " must be >= ", min, ", got ", value));
  };
  DMOE_RETURN_IF_ERROR(at_least("device", device, 0));
  DMOE_RETURN_IF_ERROR(at_least("kv_page_tokens", kv_page_tokens, 1));
  DMOE_RETURN_IF_ERROR(at_least("kv_max_pages", kv_max_pages, 1));
  DMOE_RETURN_IF_ERROR(at_least("max_rows", max_rows, 1));
  DMOE_RETURN_IF_ERROR(at_least("max_segments", max_segments, 1));
  return at_least("max_queue", max_queue, 1);
}

absl::StatusOr<std::unique_ptr<scheduler::StepExecutor>> CreateCudaStepExecutor(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const CudaStepExecutorOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<attention::DeviceAttention> device,
                        attention::CreateCudaAttention(config, weights,
                                                       {.device = options.device,
                                                        .kv_page_tokens = options.kv_page_tokens,
                                                        .kv_max_pages = options.kv_max_pages,
                                                        .max_rows = options.max_rows,
                                                        .max_segments = options.max_segments,
                                                        .max_queue = options.max_queue},
                                                       /*experts=*/nullptr));
  return std::unique_ptr<scheduler::StepExecutor>(
      std::make_unique<CudaStepExecutor>(options, std::move(device)));
}

}  // namespace dmoe::serve
