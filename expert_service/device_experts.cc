// DeviceExperts over gpu::CudaExpertRows on a DeviceWorker (see device_experts.h).
#include "expert_service/device_experts.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/device_buffer.h"
#include "model/cuda/device_worker.h"
#include "model/cuda/expert_rows.h"

namespace dmoe::expert {
namespace {

// The device objects are owned by the DeviceWorker thread (STYLE.md §8): created, used and
// destroyed only inside worker_->Run, one item at a time, so they need no lock.
class CudaExperts final : public DeviceExperts {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceExperts>> Create(
      const model::ModelConfig& config, const model::ModelWeights& weights,
      const DeviceExpertsOptions& options) {
    if (options.device < 0 || options.max_rows < 1 || options.max_queue < 1) {
      return absl::InvalidArgumentError(
          "CreateCudaExperts: device must be >= 0, max_rows and max_queue positive");
    }
    auto e = std::unique_ptr<CudaExperts>(new CudaExperts(config, options));
    DMOE_ASSIGN_OR_RETURN(e->worker_, gpu::CreateDeviceWorkerForFlag(
                                          {.device = options.device, .max_queue = options.max_queue}));
    const size_t h = static_cast<size_t>(config.hidden_size), rows = options.max_rows;
    absl::Status s = e->worker_->Run([&](gpu::DeviceContext& ctx) -> absl::Status {
      e->device_ = std::make_unique<DeviceState>();
      DeviceState& d = *e->device_;
      DMOE_ASSIGN_OR_RETURN(d.weights, gpu::CudaWeights::Upload(config, weights));
      DMOE_ASSIGN_OR_RETURN(gpu::CudaExpertRows expert_rows,
                            gpu::CudaExpertRows::Create(*d.weights, options.max_rows));
      d.rows = std::make_unique<gpu::CudaExpertRows>(std::move(expert_rows));
      DMOE_ASSIGN_OR_RETURN(d.hidden, gpu::DeviceBuffer::Allocate(rows * h * 4));
      DMOE_ASSIGN_OR_RETURN(d.ids, gpu::DeviceBuffer::Allocate(rows * 4));
      DMOE_ASSIGN_OR_RETURN(d.out, gpu::DeviceBuffer::Allocate(rows * h * 4));
      DMOE_ASSIGN_OR_RETURN(d.host_hidden, gpu::PinnedBuffer::Allocate(rows * h * 4));
      DMOE_ASSIGN_OR_RETURN(d.host_ids, gpu::PinnedBuffer::Allocate(rows * 4));
      DMOE_ASSIGN_OR_RETURN(d.host_out, gpu::PinnedBuffer::Allocate(rows * h * 4));
      e->weight_bytes_ = d.weights->AllocatedBytes();
      DMOE_LOG(INFO) << "--device cuda: GPU " << ctx.device << " holds "
                     << e->weight_bytes_ / (1 << 20) << " MiB of expert weights; "
                     << options.max_rows << " rows per launch";
      return absl::OkStatus();
    });
    if (!s.ok()) {
      // The destructor frees what was created, on the device thread.
      if (s.code() == absl::StatusCode::kResourceExhausted) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "--device cuda: the shard's experts and staging buffers do not fit in the memory of "
            "GPU ", options.device, " or in pinned host memory (use a smaller --experts range): ",
            s.message()));
      }
      return s;
    }
    return std::unique_ptr<DeviceExperts>(std::move(e));
  }

  ~CudaExperts() override {
    if (worker_ == nullptr) return;
    absl::Status s = worker_->Run([this](gpu::DeviceContext&) {
      device_.reset();
      return absl::OkStatus();
    });
    if (!s.ok()) DMOE_LOG(ERROR) << "freeing the device experts: " << s;
    worker_.reset();  // joins the device thread
  }

  absl::Status Compute(int64_t layer, const void* hidden, const void* ids, int64_t n,
                       float* out) override {
    absl::Status status = worker_->Run([&](gpu::DeviceContext& ctx) -> absl::Status {
      return ComputeOnDevice(layer, static_cast<const char*>(hidden),
                             static_cast<const char*>(ids), n, out, ctx.stream);
    });
    if (gpu::IsStickyStatus(status)) {
      // STYLE.md §5: the context is unusable; exit and let the supervisor restart the pod.
      DMOE_LOG(FATAL) << "--device cuda: " << status;
    }
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("--device cuda: layer ", layer, " (", n, " rows): ",
                                       status.message()));
    }
    return status;
  }

  uint64_t weight_bytes() const override { return weight_bytes_; }

 private:
  CudaExperts(const model::ModelConfig& config, const DeviceExpertsOptions& options)
      : hidden_size_(config.hidden_size), options_(options) {}

  // On the device thread: chunks of max_rows rows through the pinned staging buffers (which
  // also realigns wire bytes).
  absl::Status ComputeOnDevice(int64_t layer, const char* hidden, const char* ids, int64_t n,
                               float* out, cudaStream_t stream) {
    const size_t row_bytes = static_cast<size_t>(hidden_size_) * sizeof(float);
    // Refuse before the first copy: an error return must not leave a transfer in flight out
    // of the staging buffers the next call overwrites.
    DeviceState& d = *device_;
    DMOE_RETURN_IF_ERROR(d.rows->Check(layer, std::min(options_.max_rows, n)));
    for (int64_t first = 0; first < n; first += options_.max_rows) {
      const int64_t m = std::min(options_.max_rows, n - first);
      std::memcpy(d.host_hidden.data(), hidden + first * row_bytes, m * row_bytes);
      std::memcpy(d.host_ids.data(), ids + first * sizeof(int32_t), m * sizeof(int32_t));
      DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d.hidden.data(), d.host_hidden.data(),
                                                m * row_bytes, cudaMemcpyHostToDevice, stream));
      DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d.ids.data(), d.host_ids.data(),
                                                m * sizeof(int32_t), cudaMemcpyHostToDevice,
                                                stream));
      DMOE_RETURN_IF_ERROR(d.rows->Enqueue(layer, d.hidden.as<float>(), d.ids.as<int32_t>(), m,
                                           d.out.as<float>(), stream));
      DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d.host_out.data(), d.out.data(), m * row_bytes,
                                                cudaMemcpyDeviceToHost, stream));
      DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
      std::memcpy(reinterpret_cast<char*>(out) + first * row_bytes, d.host_out.data(),
                  m * row_bytes);
    }
    return absl::OkStatus();
  }

  const int64_t hidden_size_;
  const DeviceExpertsOptions options_;
  uint64_t weight_bytes_ = 0;
  std::unique_ptr<gpu::DeviceWorker> worker_;
  // Everything on the device, created and destroyed on the device thread. Members are
  // destroyed in reverse order: the scratch (rows) before the weights it points at.
  struct DeviceState {
    std::unique_ptr<gpu::CudaWeights> weights;
    std::unique_ptr<gpu::CudaExpertRows> rows;
    gpu::DeviceBuffer hidden, ids, out;            // one launch's rows
    gpu::PinnedBuffer host_hidden, host_ids, host_out;  // their host staging
  };
  std::unique_ptr<DeviceState> device_;  // device thread only
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceExperts>> CreateCudaExperts(
    const model::ModelConfig& config, const model::ModelWeights& weights,
    const DeviceExpertsOptions& options) {
  return CudaExperts::Create(config, weights, options);
}

}  // namespace dmoe::expert
