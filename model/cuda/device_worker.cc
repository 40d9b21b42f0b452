#include "model/cuda/device_worker.h"

#include <cublas_v2.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/gpu_index.h"
#include "common/status_macros.h"
#include "model/cuda/cuda_status.h"

namespace dmoe::gpu {

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // clear it: the runtime keeps the last error per thread
    return absl::FailedPreconditionError(absl::StrCat(
        "no usable CUDA device: ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
  }
  if (count == 0) return absl::FailedPreconditionError("no usable CUDA device: device count 0");
  return count;
}

absl::StatusOr<DeviceInfo> QueryDeviceInfo(int device) {
  DeviceInfo info;
  info.device = device;
  cudaDeviceProp prop;
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  info.name = prop.name;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory_bytes = prop.totalGlobalMem;
  // cudaDeviceProp::memoryClockRate is gone in CUDA 13; the attribute remains.
  int clock_khz = 0, bus_bits = 0;
  DMOE_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
  DMOE_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  info.peak_memory_bytes_per_second = 2.0 * clock_khz * 1000.0 * bus_bits / 8.0;
  return info;
}

absl::Status DeviceWorkerOptions::Validate() const {
  if (device < 0)
    return absl::InvalidArgumentError(absl::StrCat("device must be >= 0, got ", device));
  if (max_queue < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_queue must be >= 1, got ", max_queue));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceWorker>> DeviceWorker::Create(
    const DeviceWorkerOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  DMOE_ASSIGN_OR_RETURN(const int count, CudaDeviceCount());
  // A device the process cannot see is a deployment error (--gpu, CUDA_VISIBLE_DEVICES).
  DMOE_RETURN_IF_ERROR(CheckGpuIndex(options.device, count));
  std::unique_ptr<DeviceWorker> worker(new DeviceWorker(options));
  absl::Status setup_status;
  absl::Notification setup_done;
  worker->thread_ = std::thread(
      [w = worker.get(), &setup_status, &setup_done] { w->Loop(&setup_status, &setup_done); });
  setup_done.WaitForNotification();
  if (!setup_status.ok()) {
    worker->thread_.join();  // the loop returned after a failed setup
    return setup_status;
  }
  return worker;
}

DeviceWorker::~DeviceWorker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void DeviceWorker::Loop(absl::Status* setup_status, absl::Notification* setup_done) {
  DeviceContext ctx;
  ctx.device = options_.device;
  cublasHandle_t handle = nullptr;
  auto setup = [&]() -> absl::Status {
    DMOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    DMOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));
    DMOE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&handle));
    ctx.cublas = handle;
    return absl::OkStatus();
  };
  *setup_status = setup();
  const bool ok = setup_status->ok();
  setup_done->Notify();  // setup_status / setup_done must not be touched after this
  if (ok) {
    while (true) {
      Item item;
      bool refuse = false;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](DeviceWorker* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) {
              return w->stopping_ || !w->queue_.empty();
            },
            this));
        if (queue_.empty()) break;  // stopping, nothing left
        item = std::move(queue_.front());
        queue_.pop_front();
        refuse = stopping_;  // shutting down: what is still queued is refused, not run
      }
      if (refuse) {
        item.done(absl::UnavailableError("device worker shutting down"));
        continue;
      }
      item.done(item.work(ctx));
    }
  }
  if (ctx.stream != nullptr) cudaStreamSynchronize(ctx.stream);
  if (handle != nullptr) cublasDestroy(handle);
  if (ctx.stream != nullptr) cudaStreamDestroy(ctx.stream);
}

absl::Status DeviceWorker::Run(Work work) {
  absl::Status result;
  absl::Notification finished;
  Post(std::move(work), [&result, &finished](const absl::Status& status) {
    result = status;
    finished.Notify();
  });
  finished.WaitForNotification();
  return result;
}

void DeviceWorker::Post(Work work, Done done) {
  absl::Status rejection;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      rejection = absl::UnavailableError("device worker shutting down");
    } else if (static_cast<int>(queue_.size()) >= options_.max_queue) {
      rejection = absl::ResourceExhaustedError(
          absl::StrCat("device ", options_.device, " queue full (", options_.max_queue, " items)"));
    } else {
      queue_.push_back({std::move(work), std::move(done)});
      return;
    }
  }
  done(rejection);  // outside the lock: `done` may call back into the worker
}

absl::StatusOr<std::unique_ptr<DeviceWorker>> CreateDeviceWorkerForFlag(
    const DeviceWorkerOptions& options) {
  absl::StatusOr<std::unique_ptr<DeviceWorker>> worker = DeviceWorker::Create(options);
  if (worker.ok()) return worker;
  return absl::Status(worker.status().code(),
                      absl::StrCat("--device cuda: cannot use GPU ", options.device, " (--gpu ",
                                   options.device, "): ", worker.status().message()));
}

}  // namespace dmoe::gpu
