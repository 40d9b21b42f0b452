// CreateCudaAttention in a build without the CUDA backend (DMOE_ENABLE_CUDA=OFF).
#include "attention_service/device_attention.h"

namespace dmoe::attention {

absl::StatusOr<std::unique_ptr<DeviceAttention>> CreateCudaAttention(
    const model::ModelConfig&, const model::ModelWeights&, const DeviceAttentionOptions&,
    model::ExpertExecutor*) {
  return absl::FailedPreconditionError(
      "--device cuda: this binary was built without CUDA (DMOE_ENABLE_CUDA=OFF); rebuild with "
      "the CUDA toolkit or use --device cpu");
}

}  // namespace dmoe::attention
