// CreateCudaStepExecutor in a build without the CUDA backend (DMOE_ENABLE_CUDA=OFF).
#include "scheduler/cuda_step_executor.h"

namespace dmoe::scheduler {

absl::StatusOr<std::unique_ptr<StepExecutor>> CreateCudaStepExecutor(
    const model::ModelConfig&, const model::ModelWeights&, const CudaStepExecutorOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return absl::FailedPreconditionError(
      "--device cuda: this binary was built without CUDA (DMOE_ENABLE_CUDA=OFF); rebuild with "
      "the CUDA toolkit or use --device cpu");
}

}  // namespace dmoe::scheduler
