// The expert shard's core (no gRPC headers): the routed experts [first, last) of every MoE
// layer of one checkpoint, and the batched SwiGLU compute over rows routed to them, on the CPU
// kernels or on one GPU (device "cuda", device_experts.h). The gRPC adapter (expert_server.h)
// and the in-process transport (transport/) both call it.
#ifndef DMOE_EXPERT_SERVICE_EXPERT_ENGINE_H_
#define DMOE_EXPERT_SERVICE_EXPERT_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "expert_service/device_experts.h"
#include "transport/shard_info.h"
#include "metrics/endpoint.h"
#include "model/checkpoint.h"
#include "model/kernels.h"
#include "model/weights.h"
#include "prometheus/counter.h"
#include "prometheus/histogram.h"

namespace dmoe::expert {

// Element type of a tensor on the wire; the values mirror dmoe.v1.DType.
enum class WireDType { kUnspecified = 0, kF32 = 1, kF16 = 2, kBF16 = 3, kI32 = 4 };
// "F32", "I32", ... ("UNSPECIFIED", or "DTYPE(<n>)" for a value outside the enum).
std::string WireDTypeName(WireDType dtype);

// A non-owning view of a wire tensor. The gRPC adapter points `data` at the request message's
// bytes, which live until the call's OnDone(): no view may outlive its call. `data` may have
// any alignment.
struct TensorView {
  WireDType dtype = WireDType::kUnspecified;
  std::vector<int64_t> shape{};
  const void* data = nullptr;
  size_t size_bytes = 0;
};

// One RunExperts call in domain form (see proto/dmoe/v1/expert.proto for field semantics).
struct ExpertRequest {
  std::string request_id{};        // tracing only
  int64_t step = 0;                // tracing only
  int64_t layer = 0;               // absolute layer; must be a MoE layer
  uint64_t placement_version = 0;  // echoed; never rejected on
  TensorView hidden{};             // F32 [n, hidden_size]
  TensorView expert_ids{};         // I32 [n], each in [expert_first, expert_last)
};

// A unit of asynchronous work handed to ExpertEngine::Submit. The engine calls OutputBuffer at
// most once and then Done exactly once, either from Submit itself (rejected: invalid request,
// queue full, engine stopping) or from a worker thread. After Done the engine no longer
// touches the object (it destroys it right after Done returns).
class ExpertWork {
 public:
  virtual ~ExpertWork() = default;
  virtual const ExpertRequest& request() const = 0;
  // Work not started by then finishes with DEADLINE_EXCEEDED.
  virtual absl::Time deadline() const = 0;
  // Polled before computing: true finishes the work with CANCELLED without computing.
  virtual bool cancelled() const { return false; }
  // Where the F32 [num_rows, hidden_size] output goes. Called only for valid requests, from
  // the worker thread, before computing. Must stay valid until Done.
  virtual float* OutputBuffer(int64_t num_rows, int64_t hidden_size) = 0;
  // OK: the output buffer holds the result. compute_seconds: time spent in the kernels.
  virtual void Done(const absl::Status& status, double compute_seconds) = 0;
};
using ExpertWorkPtr = std::unique_ptr<ExpertWork>;

struct ExpertEngineOptions {
  std::string model_dir{};
  // Reported in ShardInfo; empty means the last component of model_dir.
  std::string model_name{};
  // Routed experts [expert_first, expert_last) of every MoE layer; expert_last < 0 means all.
  int64_t expert_first = 0;
  int64_t expert_last = -1;
  // Where the experts run: "cpu" (the kernels below) or "cuda" (GPU `cuda_device`, grouped
  // expert kernels; the kernels and threads settings then do not apply).
  std::string device = "cpu";
  // `--gpu`: index into the CUDA devices the process can see (common/gpu_index.h); "cuda" only.
  int cuda_device = 0;
  // Rows per GPU launch with device "cuda"; larger calls run in chunks.
  int64_t device_max_rows = 4096;
  // CPU compute backend: "cpu" (fast, batch-invariant) or "reference" (naive oracle).
  std::string kernels = "cpu";
  // Concurrent computations: one Kernels instance (and one worker thread for Submit) each.
  // The kernels are thread-compatible only, so this is also the compute parallelism across
  // calls. On "cuda" the GPU runs one call at a time (staging copies included); more workers
  // only queue calls on it.
  int num_workers = 1;
  // Threads inside each Kernels instance (parallel over experts within one call).
  int threads_per_worker = 1;
  // Submitted work waiting for a worker beyond this is rejected with RESOURCE_EXHAUSTED.
  int max_queue = 1024;
  // Prometheus (dmoe_expert_rows_total, dmoe_expert_compute_seconds,
  // dmoe_expert_busy_seconds_total); null registry: none.
  metrics::ProcessMetrics metrics{};

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe. Holds the memory-mapped expert weights (load_dense = false), `num_workers`
// kernels instances (or the GPU copy of the experts) and the worker threads that run
// submitted work.
class ExpertEngine {
 public:
  // Loads the checkpoint's experts [expert_first, expert_last). Errors: INVALID_ARGUMENT for
  // bad options or a range outside [0, num_experts); checkpoint errors pass through; device
  // "cuda": CreateCudaExperts's errors (FAILED_PRECONDITION without a GPU or CUDA build).
  static absl::StatusOr<std::unique_ptr<ExpertEngine>> Create(const ExpertEngineOptions& options);
  // Finishes queued work with UNAVAILABLE and joins the workers.
  ~ExpertEngine();
  ExpertEngine(const ExpertEngine&) = delete;
  ExpertEngine& operator=(const ExpertEngine&) = delete;

  const transport::ShardInfo& info() const { return info_; }
  const model::ModelConfig& config() const { return checkpoint_->config(); }

  // Checks `request` against this shard without computing; never blocks. Returns the row
  // count n. INVALID_ARGUMENT naming the field: "layer", "hidden.dtype", "hidden.shape",
  // "hidden.data", "expert_ids.dtype", "expert_ids.shape", "expert_ids.data",
  // "expert_ids[i]".
  absl::StatusOr<int64_t> Validate(const ExpertRequest& request) const;

  // Validates and computes on the calling thread: out[i] = expert_{ids[i]}(hidden[i]),
  // F32 [n, hidden_size], unweighted. Waits for a free kernels instance until `deadline`
  // (DEADLINE_EXCEEDED after it). `out` may be null when n == 0. `compute_seconds` may be null.
  absl::Status Run(const ExpertRequest& request, absl::Time deadline, float* out,
                   double* compute_seconds = nullptr);

  // Queues `work` for a worker thread; always takes ownership (see ExpertWork). Rejections are
  // finished from this call: INVALID_ARGUMENT (as Validate), RESOURCE_EXHAUSTED (queue full),
  // UNAVAILABLE (engine shutting down). Never blocks on compute.
  void Submit(ExpertWorkPtr&& work);

  // Expert balancing (docs/expert-balancing.md): besides its range, the shard computes
  // `extra[i]` (expert ids of MoE layer first_moe_layer + i, outside the range; at most
  // `max_per_layer` per layer, a negative bound meaning none) from now on. Experts not yet
  // loaded are bound from the memory-mapped checkpoint and their pages read in before this
  // returns, so the first call to them pays no page faults; experts dropped from the set are
  // refused from the return on (INVALID_ARGUMENT naming the expert, like any expert outside
  // the range). `extra` may be shorter than the MoE layer count (missing layers: none).
  // Errors: INVALID_ARGUMENT for an id outside [0, num_experts), a layer beyond the model or
  // a layer over the bound; FAILED_PRECONDITION on device "cuda" (GPU shards serve their
  // range only). Thread-safe; concurrent calls to Run/Submit see the old or the new set.
  absl::Status SetResidentExperts(const std::vector<std::vector<int32_t>>& extra,
                                  int64_t max_per_layer = -1) ABSL_LOCKS_EXCLUDED(mu_);
  // Experts outside the range currently served, summed over layers (metrics, tests).
  int64_t resident_extra_experts() const ABSL_LOCKS_EXCLUDED(mu_);

  // Rows computed since creation (all calls), for tests and metrics.
  int64_t rows_computed() const;
  // Seconds spent computing since creation; sent with heartbeats (expert autoscaling).
  double busy_seconds() const { return busy_micros_.load() * 1e-6; }

 private:
  struct QueuedWork {
    ExpertWorkPtr work;
    int64_t num_rows = 0;  // from Validate at Submit
  };

  explicit ExpertEngine(const ExpertEngineOptions& options) : options_(options) {}
  absl::Status RunValidated(const ExpertRequest& request, int64_t num_rows, absl::Time deadline,
                            float* out, double* compute_seconds);
  // Computes `num_rows` validated rows with kernels instance `index` (or on the GPU).
  absl::Status Compute(int index, const ExpertRequest& request, int64_t num_rows, float* out);
  // Takes a free kernels instance, waiting until `deadline`; -1 on timeout.
  int AcquireKernels(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseKernels(int index, int64_t rows) ABSL_LOCKS_EXCLUDED(mu_);
  bool HasFreeKernels() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);

  ExpertEngineOptions options_;
  std::atomic<int64_t> busy_micros_{0};
  prometheus::Counter* rows_metric_ = nullptr;
  prometheus::Counter* busy_metric_ = nullptr;
  prometheus::Histogram* compute_metric_ = nullptr;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights weights_;
  transport::ShardInfo info_;
  // kernels_[i] is used by whoever set kernels_busy_[i] (thread-compatible kernels). Empty on
  // "cuda", where device_ computes and kernels_busy_ only bounds the concurrent calls.
  std::vector<model::KernelsPtr> kernels_;
  std::unique_ptr<DeviceExperts> device_;

  mutable absl::Mutex mu_;
  std::vector<bool> kernels_busy_ ABSL_GUARDED_BY(mu_);
  // [MoE layer index][expert]: served although outside the range (SetResidentExperts).
  std::vector<std::vector<bool>> extra_ ABSL_GUARDED_BY(mu_);
  int64_t extra_count_ ABSL_GUARDED_BY(mu_) = 0;
  // Experts whose weights_ entries are bound (the range at Create, others on first use);
  // only SetResidentExperts writes it and weights_' entries of unbound experts, under
  // load_mu_, before the expert becomes servable.
  absl::Mutex load_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<bool> bound_ ABSL_GUARDED_BY(load_mu_);
  std::deque<QueuedWork> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t rows_computed_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> workers_;
};

}  // namespace dmoe::expert

#endif  // DMOE_EXPERT_SERVICE_EXPERT_ENGINE_H_
