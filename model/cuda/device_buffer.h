// An owned device allocation (cudaMalloc / cudaFree) and pinned host staging memory
// (cudaMallocHost / cudaFreeHost). Host-only header.
#ifndef DMOE_MODEL_CUDA_DEVICE_BUFFER_H_
#define DMOE_MODEL_CUDA_DEVICE_BUFFER_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/statusor.h"
#include "model/cuda/cuda_status.h"

namespace dmoe::gpu {

// Move-only. Owned by the DeviceWorker thread of its device: allocate and destroy it there
// (cudaFree synchronises the device, and the device must be current).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // `bytes` == 0 gives an empty buffer (data() == nullptr). RESOURCE_EXHAUSTED when the device
  // is out of memory.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) {
    DeviceBuffer b;
    if (bytes == 0) return b;
    DMOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.data_, bytes));
    b.size_ = bytes;
    return b;
  }
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void Reset() {
    if (data_ != nullptr) cudaFree(data_);  // errors here are sticky ones reported elsewhere
    data_ = nullptr;
    size_ = 0;
  }
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Page-locked host memory for asynchronous copies. Move-only; same threading rule.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes) {
    PinnedBuffer b;
    if (bytes == 0) return b;
    DMOE_CUDA_RETURN_IF_ERROR(cudaMallocHost(&b.data_, bytes));
    b.size_ = bytes;
    return b;
  }
  ~PinnedBuffer() { Reset(); }
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void Reset() {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    size_ = 0;
  }
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_DEVICE_BUFFER_H_
