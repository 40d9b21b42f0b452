// The one thread that owns a GPU (STYLE.md §8): it makes the device current, creates the
// stream and the cuBLAS handle, and runs every piece of work that touches CUDA state for that
// device. Other threads hand it work through a bounded queue and get an absl::Status back.
#ifndef DMOE_MODEL_CUDA_DEVICE_WORKER_H_
#define DMOE_MODEL_CUDA_DEVICE_WORKER_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

struct cublasContext;

namespace dmoe::gpu {

// Number of usable CUDA devices. FAILED_PRECONDITION naming the CUDA error when the runtime
// cannot talk to a driver (no GPU, no libcuda, a driver older than the runtime), or when the
// count is 0.
absl::StatusOr<int> CudaDeviceCount();

// What the benchmark and the logs need to know about a device.
struct DeviceInfo {
  int device = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
  uint64_t total_memory_bytes = 0;
  // Peak DRAM bandwidth from the memory clock and bus width (2 transfers per clock):
  // 2 * clock_khz * 1000 * bus_bits / 8. H100 SXM (HBM3): ~3.35e12.
  double peak_memory_bytes_per_second = 0;
};
absl::StatusOr<DeviceInfo> QueryDeviceInfo(int device);

// What work running on the device thread may use. Valid only on that thread, during the call.
struct DeviceContext {
  int device = 0;
  cudaStream_t stream = nullptr;    // the worker's stream (non-blocking w.r.t. the null stream)
  cublasContext* cublas = nullptr;  // bound to nothing; launchers set the stream they use
};

struct DeviceWorkerOptions {
  int device = 0;
  // Work items waiting beyond this are refused with RESOURCE_EXHAUSTED (STYLE.md §8).
  int max_queue = 64;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe: any thread may call Run / Post. The work itself runs on the device thread, one
// item at a time, in submission order.
class DeviceWorker {
 public:
  using Work = std::function<absl::Status(DeviceContext&)>;
  using Done = std::function<void(const absl::Status&)>;

  // Starts the thread and waits for its setup (cudaSetDevice, stream, cuBLAS handle). Errors:
  // INVALID_ARGUMENT for bad options, FAILED_PRECONDITION without a usable device or when
  // options.device is not one of the visible devices (CheckGpuIndex), CUDA and cuBLAS errors of
  // the setup.
  static absl::StatusOr<std::unique_ptr<DeviceWorker>> Create(const DeviceWorkerOptions& options);
  // Finishes queued work with UNAVAILABLE (its Done is called), then joins the thread, which
  // synchronises the stream and destroys the handle and the stream.
  ~DeviceWorker();
  DeviceWorker(const DeviceWorker&) = delete;
  DeviceWorker& operator=(const DeviceWorker&) = delete;

  int device() const { return options_.device; }

  // Runs `work` on the device thread and waits for its status. RESOURCE_EXHAUSTED when the
  // queue is full, UNAVAILABLE when the worker is shutting down. Must not be called from the
  // device thread itself (it would wait for itself).
  absl::Status Run(Work work);

  // Queues `work`; `done` receives its status on the device thread, or the rejection
  // (RESOURCE_EXHAUSTED / UNAVAILABLE) from this call. Never blocks on the device.
  void Post(Work work, Done done);

 private:
  struct Item {
    Work work;
    Done done;
  };
  explicit DeviceWorker(const DeviceWorkerOptions& options) : options_(options) {}
  void Loop(absl::Status* setup_status, absl::Notification* setup_done);

  const DeviceWorkerOptions options_;
  absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// DeviceWorker::Create for a role started with `--device cuda`: the same errors, phrased for
// the operator ("--device cuda: cannot use GPU 0 (--gpu 0): no usable CUDA device: ...").
absl::StatusOr<std::unique_ptr<DeviceWorker>> CreateDeviceWorkerForFlag(
    const DeviceWorkerOptions& options);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_DEVICE_WORKER_H_
