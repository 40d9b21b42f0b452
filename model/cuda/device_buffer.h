// Owned CUDA allocations: DeviceBuffer (cudaMalloc / cudaFree) and PinnedBuffer, page-locked
// host staging memory (cudaMallocHost / cudaFreeHost). One class over an allocator policy, so
// the two differ only in the pair of calls. Host-only header.
#ifndef DMOE_MODEL_CUDA_DEVICE_BUFFER_H_
#define DMOE_MODEL_CUDA_DEVICE_BUFFER_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/cuda/cuda_status.h"

namespace dmoe::gpu {

// Allocator policies: Allocate(&p, bytes) with bytes > 0, Free(p) with p != nullptr. Free
// ignores errors: those are sticky ones reported by the next checked call.
struct DeviceMemory {
  static absl::Status Allocate(void** p, size_t bytes) {
    DMOE_CUDA_RETURN_IF_ERROR(cudaMalloc(p, bytes));
    return absl::OkStatus();
  }
  static void Free(void* p) { cudaFree(p); }
};

struct PinnedHostMemory {
  static absl::Status Allocate(void** p, size_t bytes) {
    DMOE_CUDA_RETURN_IF_ERROR(cudaMallocHost(p, bytes));
    return absl::OkStatus();
  }
  static void Free(void* p) { cudaFreeHost(p); }
};

// Move-only. Owned by the DeviceWorker thread of its device: allocate and destroy it there
// (cudaFree synchronises the device, and the device must be current).
template <typename Memory>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  // `bytes` == 0 gives an empty buffer (data() == nullptr). RESOURCE_EXHAUSTED when out of
  // memory.
  static absl::StatusOr<CudaBuffer> Allocate(size_t bytes) {
    CudaBuffer b;
    if (bytes == 0) return b;
    if (absl::Status s = Memory::Allocate(&b.data_, bytes); !s.ok()) return s;
    b.size_ = bytes;
    return b;
  }
  ~CudaBuffer() { Reset(); }
  CudaBuffer(CudaBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  CudaBuffer& operator=(CudaBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void Reset() {
    if (data_ != nullptr) Memory::Free(data_);
    data_ = nullptr;
    size_ = 0;
  }
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Device memory.
using DeviceBuffer = CudaBuffer<DeviceMemory>;
// Page-locked host memory for asynchronous copies; same threading rule.
using PinnedBuffer = CudaBuffer<PinnedHostMemory>;

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_DEVICE_BUFFER_H_
