#include "model/cpu/make_kernels.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "model/cpu/fast_kernels.h"
#include "model/cpu/reference_kernels.h"

namespace dmoe::model {

absl::StatusOr<KernelsPtr> MakeKernels(const std::string& name, int num_threads) {
  if (name == "cpu") return std::make_unique<FastKernels>(FastKernelsOptions{num_threads});
  if (name == "reference") return std::make_unique<ReferenceKernels>();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown kernels '", name, "' (expected 'cpu' or 'reference')"));
}

}  // namespace dmoe::model
