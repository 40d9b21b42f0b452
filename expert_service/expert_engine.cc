#include "expert_service/expert_engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/gpu_index.h"
#include "common/status_macros.h"
#include "model/cpu/make_kernels.h"
#include "metrics/catalog.h"

namespace dmoe::expert {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

std::string WireDTypeName(WireDType dtype) {
  switch (dtype) {
    case WireDType::kUnspecified:
      return "UNSPECIFIED";
    case WireDType::kF32:
      return "F32";
    case WireDType::kF16:
      return "F16";
    case WireDType::kBF16:
      return "BF16";
    case WireDType::kI32:
      return "I32";
  }
  return absl::StrCat("DTYPE(", static_cast<int>(dtype), ")");
}

absl::Status ExpertEngineOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("model_dir: must not be empty");
  if (expert_first < 0) {
    return absl::InvalidArgumentError(absl::StrCat("expert_first: ", expert_first, " is negative"));
  }
  // An empty range would be a shard that can never be routed to.
  if (expert_last >= 0 && expert_last <= expert_first) {
    return absl::InvalidArgumentError(absl::StrCat("expert_last: [", expert_first, ", ",
                                                   expert_last, ") is an empty range"));
  }
  if (num_workers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_workers: ", num_workers, " < 1"));
  }
  if (threads_per_worker < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads_per_worker: ", threads_per_worker, " < 1"));
  }
  if (max_queue < 1) return absl::InvalidArgumentError(absl::StrCat("max_queue: ", max_queue, " < 1"));
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("device: expected \"cpu\" or \"cuda\", got \"", device, "\""));
  }
  if (device_max_rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("device_max_rows: ", device_max_rows, " < 1"));
  }
  return ValidateGpuFlag(cuda_device);
}

absl::StatusOr<std::unique_ptr<ExpertEngine>> ExpertEngine::Create(
    const ExpertEngineOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto engine = std::unique_ptr<ExpertEngine>(new ExpertEngine(options));
  if (const metrics::ProcessMetrics& m = options.metrics; m.registry) {
    engine->rows_metric_ =
        &metrics::CounterFamily(*m.registry, "dmoe_expert_rows_total", m.model_version).Add({});
    engine->busy_metric_ =
        &metrics::CounterFamily(*m.registry, "dmoe_expert_busy_seconds_total", m.model_version)
             .Add({});
    engine->compute_metric_ = &metrics::AddHistogram(
        metrics::HistogramFamily(*m.registry, "dmoe_expert_compute_seconds", m.model_version),
        "dmoe_expert_compute_seconds");
  }
  DMOE_ASSIGN_OR_RETURN(engine->checkpoint_, model::Checkpoint::Open(options.model_dir));
  const model::ModelConfig& c = engine->checkpoint_->config();
  const int64_t first = options.expert_first;
  const int64_t last = options.expert_last < 0 ? c.num_experts : options.expert_last;
  if (first >= last || last > c.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("experts: [", first, ", ", last,
                                                   ") is not a non-empty range inside [0, ",
                                                   c.num_experts, ")"));
  }
  if (c.first_k_dense_replace >= c.num_hidden_layers) {
    return absl::FailedPreconditionError(
        absl::StrCat(options.model_dir, ": the model has no MoE layers"));
  }
  DMOE_ASSIGN_OR_RETURN(engine->weights_,
                        model::LoadModelWeights(*engine->checkpoint_,
                                                {.load_dense = false,
                                                 .load_experts = true,
                                                 .expert_first = first,
                                                 .expert_last = last}));
  transport::ShardInfo& info = engine->info_;
  info.model_name = options.model_name.empty() ? BaseName(options.model_dir) : options.model_name;
  info.model_type = c.model_type;
  info.hidden_size = c.hidden_size;
  info.num_hidden_layers = c.num_hidden_layers;
  info.first_moe_layer = c.first_k_dense_replace;
  info.num_experts = c.num_experts;
  info.num_experts_per_tok = c.num_experts_per_tok;
  info.moe_intermediate_size = c.moe_intermediate_size;
  info.expert_first = first;
  info.expert_last = last;
  info.weight_dtype = std::string(
      DTypeName(engine->weights_.layers[c.first_k_dense_replace].experts[first].gate.dtype));
  DMOE_ASSIGN_OR_RETURN(info.config_fingerprint, model::ConfigFingerprintOfDir(options.model_dir));

  if (options.device == "cuda") {
    DMOE_ASSIGN_OR_RETURN(engine->device_,
                          CreateCudaExperts(c, engine->weights_,
                                            {.device = options.cuda_device,
                                             .max_rows = options.device_max_rows,
                                             .max_queue = options.max_queue}));
  } else {
    for (int i = 0; i < options.num_workers; ++i) {
      DMOE_ASSIGN_OR_RETURN(model::KernelsPtr kernels,
                            model::MakeKernels(options.kernels, options.threads_per_worker));
      engine->kernels_.push_back(std::move(kernels));
    }
  }
  {
    absl::MutexLock lock(&engine->mu_);
    engine->kernels_busy_.assign(options.num_workers, false);
    engine->extra_.assign(static_cast<size_t>(c.num_hidden_layers - c.first_k_dense_replace),
                          std::vector<bool>(static_cast<size_t>(c.num_experts), false));
  }
  {
    absl::MutexLock lock(&engine->load_mu_);
    engine->bound_.assign(static_cast<size_t>(c.num_experts), false);
    for (int64_t e = first; e < last; ++e) engine->bound_[e] = true;
  }
  for (int i = 0; i < options.num_workers; ++i) {
    engine->workers_.emplace_back([e = engine.get()] { e->WorkerLoop(); });
  }
  DMOE_LOG(INFO) << "expert engine: model '" << info.model_name << "' (" << info.model_type
                 << "), experts [" << first << ", " << last << ") of layers ["
                 << info.first_moe_layer << ", " << info.num_hidden_layers << "), "
                 << info.weight_dtype << ", " << options.num_workers << " worker(s), "
                 << (engine->device_ ? std::string("on the GPU")
                                     : absl::StrCat(options.threads_per_worker,
                                                    " thread(s) each, kernels ", options.kernels));
  return engine;
}

ExpertEngine::~ExpertEngine() {
  std::deque<QueuedWork> abandoned;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    abandoned.swap(queue_);
  }
  for (QueuedWork& item : abandoned) {
    item.work->Done(absl::UnavailableError("expert engine is shutting down"), 0);
  }
  for (std::thread& t : workers_) t.join();
}

absl::StatusOr<int64_t> ExpertEngine::Validate(const ExpertRequest& request) const {
  const model::ModelConfig& c = config();
  const int64_t h = c.hidden_size;
  if (request.layer < c.first_k_dense_replace || request.layer >= c.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", request.layer, " is not a MoE layer of this model (MoE layers are [",
                     c.first_k_dense_replace, ", ", c.num_hidden_layers, "))"));
  }
  const TensorView& hidden = request.hidden;
  if (hidden.dtype != WireDType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden.dtype: expected F32, got ", WireDTypeName(hidden.dtype)));
  }
  // The bound keeps n * h * 4 far from overflow; protobuf caps a message at 2 GiB anyway.
  constexpr int64_t kMaxRows = int64_t{1} << 31;
  if (hidden.shape.size() != 2 || hidden.shape[1] != h || hidden.shape[0] < 0 ||
      hidden.shape[0] > kMaxRows) {
    return absl::InvalidArgumentError(absl::StrCat("hidden.shape: expected [n, ", h, "], got ",
                                                   ShapeString(hidden.shape)));
  }
  const int64_t n = hidden.shape[0];
  const size_t hidden_bytes = static_cast<size_t>(n * h) * sizeof(float);
  if (hidden.size_bytes != hidden_bytes || (n > 0 && hidden.data == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("hidden.data: expected ", hidden_bytes,
                                                   " bytes for F32 ", ShapeString(hidden.shape),
                                                   ", got ", hidden.size_bytes));
  }
  const TensorView& ids = request.expert_ids;
  if (ids.dtype != WireDType::kI32) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert_ids.dtype: expected I32, got ", WireDTypeName(ids.dtype)));
  }
  if (ids.shape.size() != 1 || ids.shape[0] != n) {
    return absl::InvalidArgumentError(absl::StrCat("expert_ids.shape: expected [", n,
                                                   "] (one id per hidden row), got ",
                                                   ShapeString(ids.shape)));
  }
  const size_t id_bytes = static_cast<size_t>(n) * sizeof(int32_t);
  if (ids.size_bytes != id_bytes || (n > 0 && ids.data == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("expert_ids.data: expected ", id_bytes,
                                                   " bytes for I32 [", n, "], got ",
                                                   ids.size_bytes));
  }
  const char* id_data = static_cast<const char*>(ids.data);
  for (int64_t i = 0; i < n; ++i) {
    int32_t e;
    std::memcpy(&e, id_data + i * sizeof(int32_t), sizeof(e));  // any alignment
    if (e < info_.expert_first || e >= info_.expert_last) {
      if (e >= 0 && e < c.num_experts) {
        absl::MutexLock lock(&mu_);
        if (extra_[request.layer - c.first_k_dense_replace][e]) continue;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "expert_ids[", i, "]: expert ", e, " is outside this shard's range [",
          info_.expert_first, ", ", info_.expert_last, ") and not loaded here for layer ",
          request.layer));
    }
  }
  return n;
}

absl::Status ExpertEngine::SetResidentExperts(const std::vector<std::vector<int32_t>>& extra,
                                              int64_t max_per_layer) {
  const model::ModelConfig& c = config();
  const size_t moe_layers = static_cast<size_t>(c.num_hidden_layers - c.first_k_dense_replace);
  if (extra.size() > moe_layers) {
    return absl::InvalidArgumentError(absl::StrCat("extra: ", extra.size(),
                                                   " layers, the model has ", moe_layers,
                                                   " MoE layers"));
  }
  std::vector<std::vector<bool>> next(moe_layers, std::vector<bool>(c.num_experts, false));
  int64_t count = 0;
  for (size_t l = 0; l < extra.size(); ++l) {
    int64_t in_layer = 0;
    for (int32_t e : extra[l]) {
      if (e < 0 || e >= c.num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("extra[", l, "]: expert ", e,
                                                       " is outside [0, ", c.num_experts, ")"));
      }
      if (e >= info_.expert_first && e < info_.expert_last) continue;  // home: always served
      if (!next[l][e]) ++in_layer;
      next[l][e] = true;
    }
    if (max_per_layer >= 0 && in_layer > max_per_layer) {
      return absl::InvalidArgumentError(absl::StrCat("extra[", l, "]: ", in_layer,
                                                     " experts over the budget of ",
                                                     max_per_layer, " per layer"));
    }
    count += in_layer;
  }
  if (device_ && count > 0) {
    return absl::FailedPreconditionError(
        "device cuda: GPU expert shards serve their own range only (no redundant experts)");
  }
  absl::MutexLock load_lock(&load_mu_);
  // Bind the experts never served before (all their layers at once: views into the mapping),
  // then read every page of the layers that need them, before any call may use them.
  std::vector<bool> needed(c.num_experts, false);
  for (const auto& layer : next) {
    for (int64_t e = 0; e < c.num_experts; ++e) needed[e] = needed[e] || layer[e];
  }
  for (int64_t e = 0; e < c.num_experts; ++e) {
    if (!needed[e] || bound_[e]) continue;
    DMOE_ASSIGN_OR_RETURN(model::ModelWeights one,
                          model::LoadModelWeights(*checkpoint_, {.load_dense = false,
                                                                 .load_experts = true,
                                                                 .expert_first = e,
                                                                 .expert_last = e + 1}));
    for (int64_t l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l) {
      weights_.layers[l].experts[e] = one.layers[l].experts[e];
    }
    bound_[e] = true;
  }
  volatile unsigned char sink = 0;
  for (size_t l = 0; l < next.size(); ++l) {
    for (int64_t e = 0; e < c.num_experts; ++e) {
      if (!next[l][e]) continue;
      const model::FfnWeights& w = weights_.layers[c.first_k_dense_replace + l].experts[e];
      for (const model::WeightMatrix* m : {&w.gate, &w.up, &w.down}) {
        const auto* bytes = static_cast<const unsigned char*>(m->data);
        for (size_t off = 0; off < m->nbytes(); off += 4096) sink = sink + bytes[off];
      }
    }
  }
  absl::MutexLock lock(&mu_);
  extra_ = std::move(next);
  extra_count_ = count;
  return absl::OkStatus();
}

int64_t ExpertEngine::resident_extra_experts() const {
  absl::MutexLock lock(&mu_);
  return extra_count_;
}

bool ExpertEngine::HasFreeKernels() const {
  return std::find(kernels_busy_.begin(), kernels_busy_.end(), false) != kernels_busy_.end();
}

bool ExpertEngine::HasWorkOrStopping() const { return stopping_ || !queue_.empty(); }

int ExpertEngine::AcquireKernels(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithDeadline(absl::Condition(this, &ExpertEngine::HasFreeKernels), deadline)) {
    return -1;
  }
  const int index = static_cast<int>(
      std::find(kernels_busy_.begin(), kernels_busy_.end(), false) - kernels_busy_.begin());
  kernels_busy_[index] = true;
  return index;
}

void ExpertEngine::ReleaseKernels(int index, int64_t rows) {
  absl::MutexLock lock(&mu_);
  kernels_busy_[index] = false;
  rows_computed_ += rows;
}

int64_t ExpertEngine::rows_computed() const {
  absl::MutexLock lock(&mu_);
  return rows_computed_;
}

absl::Status ExpertEngine::Compute(int index, const ExpertRequest& request, int64_t num_rows,
                                   float* out) {
  if (device_) {
    return device_->Compute(request.layer, request.hidden.data, request.expert_ids.data,
                            num_rows, out);
  }
  const int64_t h = config().hidden_size;
  const model::LayerWeights& layer = weights_.layers[request.layer];
  // Wire bytes carry no alignment guarantee; the kernels read floats.
  const float* hidden = static_cast<const float*>(request.hidden.data);
  std::vector<float> aligned;
  if (reinterpret_cast<uintptr_t>(hidden) % alignof(float) != 0) {
    aligned.resize(static_cast<size_t>(num_rows * h));
    std::memcpy(aligned.data(), request.hidden.data, request.hidden.size_bytes);
    hidden = aligned.data();
  }
  // One task per expert that received rows, in expert order (as BuildExpertTasks); the
  // kernels are batch-invariant, so each row's output does not depend on its neighbours.
  // Indexed by global expert id: besides its range the shard may serve loaded extra experts.
  std::vector<model::ExpertTask> by_expert(static_cast<size_t>(config().num_experts));
  const char* id_data = static_cast<const char*>(request.expert_ids.data);
  for (int64_t i = 0; i < num_rows; ++i) {
    int32_t e;
    std::memcpy(&e, id_data + i * sizeof(int32_t), sizeof(e));
    model::ExpertTask& task = by_expert[e];
    task.weights = &layer.experts[e];
    task.input_rows.push_back(static_cast<int32_t>(i));
    task.output_rows.push_back(static_cast<int32_t>(i));
  }
  std::vector<model::ExpertTask> tasks;
  for (model::ExpertTask& task : by_expert) {
    if (!task.input_rows.empty()) tasks.push_back(std::move(task));
  }
  kernels_[index]->Experts(hidden, h, tasks, out);
  return absl::OkStatus();
}

absl::Status ExpertEngine::RunValidated(const ExpertRequest& request, int64_t num_rows,
                                        absl::Time deadline, float* out,
                                        double* compute_seconds) {
  if (compute_seconds) *compute_seconds = 0;
  if (num_rows == 0) return absl::OkStatus();
  if (absl::Now() >= deadline) {
    return absl::DeadlineExceededError(absl::StrCat(
        "deadline passed before layer ", request.layer, " (", num_rows, " rows) was computed"));
  }
  const int k = AcquireKernels(deadline);
  if (k < 0) {
    return absl::DeadlineExceededError(absl::StrCat("deadline passed waiting for a worker for layer ",
                                                    request.layer, " (", num_rows, " rows)"));
  }
  const auto start = std::chrono::steady_clock::now();
  const absl::Status computed = Compute(k, request, num_rows, out);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!computed.ok()) {
    ReleaseKernels(k, 0);
    return computed;
  }
  if (compute_seconds) *compute_seconds = seconds;
  busy_micros_ += static_cast<int64_t>(seconds * 1e6);
  if (rows_metric_) {
    rows_metric_->Increment(static_cast<double>(num_rows));
    busy_metric_->Increment(seconds);
    compute_metric_->Observe(seconds);
  }
  ReleaseKernels(k, num_rows);
  return absl::OkStatus();
}

absl::Status ExpertEngine::Run(const ExpertRequest& request, absl::Time deadline, float* out,
                               double* compute_seconds) {
  DMOE_ASSIGN_OR_RETURN(const int64_t num_rows, Validate(request));
  return RunValidated(request, num_rows, deadline, out, compute_seconds);
}

void ExpertEngine::Submit(ExpertWorkPtr&& work) {
  ExpertWorkPtr owned = std::move(work);
  absl::StatusOr<int64_t> num_rows = Validate(owned->request());
  if (!num_rows.ok()) {
    owned->Done(num_rows.status(), 0);
    return;
  }
  absl::Status rejected;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      rejected = absl::UnavailableError("expert engine is shutting down");
    } else if (queue_.size() >= static_cast<size_t>(options_.max_queue)) {
      rejected = absl::ResourceExhaustedError(absl::StrCat(
          "expert shard queue is full (", options_.max_queue, " calls waiting)"));
    } else {
      queue_.push_back({std::move(owned), *num_rows});
    }
  }
  if (!rejected.ok()) owned->Done(rejected, 0);
}

void ExpertEngine::WorkerLoop() {
  for (;;) {
    QueuedWork item;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &ExpertEngine::HasWorkOrStopping));
      if (queue_.empty()) return;  // stopping
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    ExpertWork& work = *item.work;
    if (work.cancelled()) {
      work.Done(absl::CancelledError(absl::StrCat("call cancelled before layer ",
                                                  work.request().layer, " was computed")),
                0);
      continue;
    }
    float* out = work.OutputBuffer(item.num_rows, config().hidden_size);
    double seconds = 0;
    absl::Status status = RunValidated(work.request(), item.num_rows, work.deadline(), out, &seconds);
    work.Done(status, seconds);
  }
}

}  // namespace dmoe::expert
