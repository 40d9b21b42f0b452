// The parts of device_attention.h that need no CUDA (built in every configuration).
#include "absl/strings/str_cat.h"
#include "attention_service/device_attention.h"

namespace dmoe::attention {

absl::Status CheckDeviceGreedy(const engine::SamplingParams& sampling) {
  if (sampling.temperature == 0.0f && sampling.top_k == 0 && sampling.top_p >= 1.0f) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--device cuda computes greedy proposals only (temperature 0, no top_k / top_p); this "
      "request has temperature ", sampling.temperature, ", top_k ", sampling.top_k, ", top_p ",
      sampling.top_p, ": use --device cpu to sample"));
}

}  // namespace dmoe::attention
