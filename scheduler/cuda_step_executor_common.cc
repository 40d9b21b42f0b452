// The parts of scheduler/cuda_step_executor.h that need no CUDA (built in every configuration).
#include "absl/strings/str_cat.h"
#include "scheduler/cuda_step_executor.h"

namespace dmoe::scheduler {

absl::Status CudaStepExecutorOptions::Validate() const {
  if (device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("device must be >= 0, got ", device));
  }
  if (kv_page_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_page_tokens must be >= 1, got ", kv_page_tokens));
  }
  if (kv_max_pages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_max_pages must be >= 1, got ", kv_max_pages));
  }
  if (max_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_rows must be >= 1, got ", max_rows));
  }
  if (max_segments < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_segments must be >= 1, got ", max_segments));
  }
  if (max_queue < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_queue must be >= 1, got ", max_queue));
  }
  return absl::OkStatus();
}

absl::Status CheckDeviceSampling(const engine::SamplingParams& sampling) {
  if (sampling.temperature == 0.0f && sampling.top_k == 0 && sampling.top_p >= 1.0f) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--device cuda computes greedy proposals only (temperature 0, no top_k / top_p); this "
      "request has temperature ", sampling.temperature, ", top_k ", sampling.top_k, ", top_p ",
      sampling.top_p, ": use --device cpu to sample"));
}

}  // namespace dmoe::scheduler
