// Helpers of the CUDA test suites (label `kernels`): GPU detection with the skip/require rule,
// NMSE, device buffers with guard regions (STYLE.md §10).
//
// Without a usable GPU every test skips (cudaGetDeviceCount fails, e.g. with
// cudaErrorInsufficientDriver on machines without a driver); with DMOE_REQUIRE_GPU=1 in the
// environment (scripts/gpu-check sets it) a missing GPU is a failure instead, so a GPU run
// cannot pass by skipping.
#ifndef DMOE_TESTS_CUDA_GPU_TEST_UTIL_H_
#define DMOE_TESTS_CUDA_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/nmse.h"

namespace dmoe::gpu_testing {

// True when CUDA sees at least one device; otherwise `why` says what CUDA answered.
bool GpuAvailable(std::string* why);
// DMOE_REQUIRE_GPU is set to a non-empty value other than "0".
bool GpuRequired();

// The shared NMSE of the parity tests (tests/testing/nmse.h).
using ::dmoe_testing::Nmse;

// Deterministic uniform values in [lo, hi).
std::vector<float> RandomFloats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// Device memory for `count` elements of T with kGuardBytes of guard before and after. Fill()
// paints guards and payload with 0xA5 bytes; GuardsIntact() checks the guards afterwards (an
// op that writes out of bounds fails the test even when its payload is right).
template <typename T>
class GuardedBuffer {
 public:
  static constexpr size_t kGuardBytes = 4096;
  static constexpr unsigned char kSentinel = 0xA5;

  explicit GuardedBuffer(size_t count) : count_(count) {
    status_ = cudaMalloc(&base_, count * sizeof(T) + 2 * kGuardBytes);
    if (status_ == cudaSuccess) Fill();
  }
  ~GuardedBuffer() {
    if (base_ != nullptr) cudaFree(base_);
  }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  bool ok() const { return status_ == cudaSuccess; }
  T* get() const { return reinterpret_cast<T*>(static_cast<char*>(base_) + kGuardBytes); }
  size_t count() const { return count_; }

  void Fill() {
    ASSERT_EQ(cudaMemset(base_, kSentinel, count_ * sizeof(T) + 2 * kGuardBytes), cudaSuccess);
  }
  void Upload(const std::vector<T>& values) {
    ASSERT_LE(values.size(), count_);
    ASSERT_EQ(cudaMemcpy(get(), values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> out(count_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(out.data(), get(), count_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }
  bool GuardsIntact() const {
    std::vector<unsigned char> bytes(count_ * sizeof(T) + 2 * kGuardBytes);
    if (cudaDeviceSynchronize() != cudaSuccess) return false;
    if (cudaMemcpy(bytes.data(), base_, bytes.size(), cudaMemcpyDeviceToHost) != cudaSuccess) {
      return false;
    }
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (bytes[i] != kSentinel || bytes[bytes.size() - 1 - i] != kSentinel) return false;
    }
    return true;
  }
  // True when element i still holds the sentinel (was never written).
  static bool Untouched(const T& value) {
    unsigned char b[sizeof(T)];
    std::memcpy(b, &value, sizeof(T));
    for (unsigned char c : b) {
      if (c != kSentinel) return false;
    }
    return true;
  }

 private:
  size_t count_;
  void* base_ = nullptr;
  cudaError_t status_ = cudaSuccess;
};

}  // namespace dmoe::gpu_testing

// First statement of every GPU test.
#define DMOE_GPU_TEST_OR_SKIP()                                                            \
  do {                                                                                     \
    std::string dmoe_gpu_why_;                                                             \
    if (!::dmoe::gpu_testing::GpuAvailable(&dmoe_gpu_why_)) {                              \
      if (::dmoe::gpu_testing::GpuRequired()) {                                            \
        FAIL() << "DMOE_REQUIRE_GPU is set but there is no usable GPU: " << dmoe_gpu_why_; \
      }                                                                                    \
      GTEST_SKIP() << "no usable GPU: " << dmoe_gpu_why_;                                  \
    }                                                                                      \
  } while (0)

#endif  // DMOE_TESTS_CUDA_GPU_TEST_UTIL_H_
