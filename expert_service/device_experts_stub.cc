// CreateCudaExperts in a build without the CUDA backend (DMOE_ENABLE_CUDA=OFF).
#include "expert_service/device_experts.h"

namespace dmoe::expert {

absl::StatusOr<std::unique_ptr<DeviceExperts>> CreateCudaExperts(const model::ModelConfig&,
                                                                 const model::ModelWeights&,
                                                                 const DeviceExpertsOptions&) {
  return absl::FailedPreconditionError(
      "--device cuda: this binary was built without CUDA (DMOE_ENABLE_CUDA=OFF); rebuild with "
      "the CUDA toolkit or use --device cpu");
}

}  // namespace dmoe::expert
