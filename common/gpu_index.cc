#include "common/gpu_index.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace dmoe {

absl::Status ValidateGpuFlag(int gpu) {
  if (gpu >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--gpu: must be >= 0 (an index into the CUDA devices this process can see, "
                   "after CUDA_VISIBLE_DEVICES), got ",
                   gpu));
}

absl::Status CheckGpuIndex(int gpu, int visible_devices) {
  if (absl::Status s = ValidateGpuFlag(gpu); !s.ok()) return s;
  if (gpu < visible_devices) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "this process can see ", visible_devices, " CUDA device(s), so --gpu ", gpu,
      " does not exist (--gpu indexes the devices CUDA_VISIBLE_DEVICES leaves visible, "
      "renumbered from 0)"));
}

std::string DescribeGpuFlag(int gpu) {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible == nullptr) return absl::StrCat(" (GPU ", gpu, ")");
  return absl::StrCat(" (GPU ", gpu, " of CUDA_VISIBLE_DEVICES=", visible, ")");
}

}  // namespace dmoe
