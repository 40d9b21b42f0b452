// The CPU compute backends by the name users give them (--kernels): "cpu" (the fast backend)
// or "reference" (the naive oracle).
#ifndef DMOE_MODEL_CPU_MAKE_KERNELS_H_
#define DMOE_MODEL_CPU_MAKE_KERNELS_H_

#include <string>

#include "absl/status/statusor.h"
#include "model/kernels.h"

namespace dmoe::model {

// INVALID_ARGUMENT for any other name. `num_threads` <= 0: all hardware threads ("cpu" only).
absl::StatusOr<KernelsPtr> MakeKernels(const std::string& name, int num_threads);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CPU_MAKE_KERNELS_H_
