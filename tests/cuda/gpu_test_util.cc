#include "tests/cuda/gpu_test_util.h"

#include <cstdlib>

namespace dmoe::gpu_testing {

bool GpuAvailable(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *why = std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
    return false;
  }
  if (count == 0) {
    *why = "cudaGetDeviceCount returned 0";
    return false;
  }
  return true;
}

bool GpuRequired() {
  const char* v = std::getenv("DMOE_REQUIRE_GPU");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

std::vector<float> RandomFloats(size_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = lo + (hi - lo) * static_cast<float>(x >> 40) / 16777216.0f;
  }
  return v;
}

}  // namespace dmoe::gpu_testing
