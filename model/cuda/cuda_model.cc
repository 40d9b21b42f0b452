#include "model/cuda/cuda_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/cpu/reference_kernels.h"
#include "model/cuda/attention.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/embedding.h"
#include "model/cuda/grouped_experts.h"
#include "model/cuda/kv_cache_write.h"
#include "model/cuda/lm_head.h"
#include "model/cuda/matmul.h"
#include "model/cuda/moe_combine.h"
#include "model/cuda/moe_group.h"
#include "model/cuda/moe_router.h"
#include "model/cuda/qk_norm_rope.h"
#include "model/cuda/random_fill.h"
#include "model/cuda/rms_norm.h"
#include "model/cuda/swiglu.h"
#include "model/model.h"

namespace dmoe::gpu {
namespace {

constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool IsMoeLayer(const model::ModelConfig& c, int64_t l) {
  return c.IsMoeLayer(l) && c.num_experts > 0;
}

// Timing events (CudaModelOptions::time_phases), in events_: each layer's four, then the
// forward's three. A phase's time is the span between its event and the next one.
enum class LayerEvent : size_t { kBegin, kAttentionDone, kRoutingDone, kExpertsDone };
constexpr size_t kEventsPerLayer = 4;
enum class ForwardEvent : size_t { kStart, kHead, kEnd };
constexpr size_t kForwardEvents = 3;

size_t LayerEventSlot(int64_t layer, LayerEvent e) {
  return kEventsPerLayer * static_cast<size_t>(layer) + static_cast<size_t>(e);
}
size_t ForwardEventSlot(int64_t num_layers, ForwardEvent e) {
  return kEventsPerLayer * static_cast<size_t>(num_layers) + static_cast<size_t>(e);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// CudaWeights

absl::StatusOr<void*> CudaWeights::Alloc(size_t bytes) {
  DMOE_ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(bytes));
  void* p = buffer.data();
  buffers_.push_back(std::move(buffer));
  return p;
}

namespace {

// q8 (I8) matrices (docs/quantization.md) have no CUDA kernels: Upload dequantizes them on
// the host to F32 (q * scale, exactly the values the CPU kernels compute with) and uploads
// F32 matrices. This only makes q8 checkpoints loadable on a GPU: it takes 4 bytes per value
// on the device (more than BF16) and is no faster.
std::vector<float> DequantizeQ8(const model::WeightMatrix& m) {
  std::vector<float> wide(static_cast<size_t>(m.rows * m.cols));
  for (int64_t r = 0; r < m.rows; ++r) m.RowToF32(r, wide.data() + r * m.cols);
  return wide;
}

// Device bytes of `m` as uploaded (q8 widens to F32).
size_t UploadBytes(const model::WeightMatrix& m) {
  return m.dtype == DType::kI8 ? static_cast<size_t>(m.rows * m.cols) * sizeof(float)
                               : m.nbytes();
}

// Copies `m` to `dst` (UploadBytes(m) bytes). cudaMemcpy from pageable memory returns once
// the source is staged, so a temporary dequantized copy may be freed right after.
absl::Status CopyMatrix(void* dst, const model::WeightMatrix& m) {
  if (m.dtype == DType::kI8) {
    const std::vector<float> wide = DequantizeQ8(m);
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(dst, wide.data(), UploadBytes(m), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, m.data, m.nbytes(), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

DType UploadDType(const model::WeightMatrix& m) {
  return m.dtype == DType::kI8 ? DType::kF32 : m.dtype;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaWeights>> CudaWeights::Upload(const model::ModelConfig& config,
                                                                 const model::ModelWeights& host) {
  std::unique_ptr<CudaWeights> w(new CudaWeights(config));
  auto matrix = [&](const model::WeightMatrix& m) -> absl::StatusOr<CudaMatrix> {
    if (m.empty()) return CudaMatrix{};
    DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(UploadBytes(m)));
    DMOE_RETURN_IF_ERROR(CopyMatrix(p, m));
    return CudaMatrix{p, UploadDType(m), m.rows, m.cols};
  };
  auto vector = [&](const std::vector<float>& v) -> absl::StatusOr<const float*> {
    if (v.empty()) return nullptr;
    DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(v.size() * sizeof(float)));
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
    return static_cast<const float*>(p);
  };
  // The router runs in F32 (router_dtype fp32, as the reference's gate): a 16-bit router
  // matrix is widened once here, so the GEMM never rounds its activations to 16 bits.
  auto f32_matrix = [&](const model::WeightMatrix& m) -> absl::StatusOr<CudaMatrix> {
    if (m.empty() || m.dtype == DType::kF32) return matrix(m);
    std::vector<float> wide(static_cast<size_t>(m.rows * m.cols));
    ConvertToF32(m.dtype, m.data, wide.data(), wide.size());
    DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(wide.size() * sizeof(float)));
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(p, wide.data(), wide.size() * sizeof(float), cudaMemcpyHostToDevice));
    return CudaMatrix{p, DType::kF32, m.rows, m.cols};
  };
  auto ffn = [&](const model::FfnWeights& f) -> absl::StatusOr<CudaFfn> {
    CudaFfn out;
    DMOE_ASSIGN_OR_RETURN(out.gate, matrix(f.gate));
    DMOE_ASSIGN_OR_RETURN(out.up, matrix(f.up));
    DMOE_ASSIGN_OR_RETURN(out.down, matrix(f.down));
    return out;
  };

  if (static_cast<int64_t>(host.layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("CudaWeights::Upload: ", host.layers.size(),
                                                   " layers, config has ",
                                                   config.num_hidden_layers));
  }
  DMOE_ASSIGN_OR_RETURN(w->embed_, matrix(host.embed));
  DMOE_ASSIGN_OR_RETURN(w->lm_head_, matrix(host.lm_head));
  DMOE_ASSIGN_OR_RETURN(w->final_norm_, vector(host.final_norm));
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const model::LayerWeights& hl = host.layers[l];
    CudaLayer dl;
    std::vector<bool>& held = w->held_.emplace_back();
    DMOE_ASSIGN_OR_RETURN(dl.input_norm, vector(hl.input_norm));
    DMOE_ASSIGN_OR_RETURN(dl.qkv, matrix(hl.qkv));
    DMOE_ASSIGN_OR_RETURN(dl.q_norm, vector(hl.q_norm));
    DMOE_ASSIGN_OR_RETURN(dl.k_norm, vector(hl.k_norm));
    DMOE_ASSIGN_OR_RETURN(dl.o_proj, matrix(hl.o_proj));
    DMOE_ASSIGN_OR_RETURN(dl.post_norm, vector(hl.post_norm));
    DMOE_ASSIGN_OR_RETURN(dl.dense, ffn(hl.dense));
    DMOE_ASSIGN_OR_RETURN(dl.router, f32_matrix(hl.router));
    DMOE_ASSIGN_OR_RETURN(dl.expert_bias, vector(hl.expert_bias));
    DMOE_ASSIGN_OR_RETURN(dl.shared, ffn(hl.shared));
    if (!hl.experts.empty()) {
      // One allocation per layer for the held experts, 256-byte aligned matrices.
      const int64_t e_count = static_cast<int64_t>(hl.experts.size());
      size_t bytes = 0;
      for (const model::FfnWeights& e : hl.experts) {
        if (e.empty()) continue;
        bytes += AlignUp(UploadBytes(e.gate)) + AlignUp(UploadBytes(e.up)) +
                 AlignUp(UploadBytes(e.down));
        dl.expert_dtype = UploadDType(e.gate);
      }
      char* base = nullptr;
      if (bytes > 0) {
        DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(bytes));
        base = static_cast<char*>(p);
      }
      std::vector<const void*> ptrs(3 * e_count, nullptr);
      held.assign(e_count, false);
      size_t offset = 0;
      for (int64_t e = 0; e < e_count; ++e) {
        const model::FfnWeights& f = hl.experts[e];
        if (f.empty()) continue;
        held[e] = true;
        const model::WeightMatrix* parts[3] = {&f.gate, &f.up, &f.down};
        for (int i = 0; i < 3; ++i) {
          DMOE_RETURN_IF_ERROR(CopyMatrix(base + offset, *parts[i]));
          ptrs[i * e_count + e] = base + offset;
          offset += AlignUp(UploadBytes(*parts[i]));
        }
        ++dl.experts_held;
      }
      // Weights loaded without experts (an attention replica, load_experts = false): no
      // table, the pointers stay null (CudaModel with a host expert hook never reads them).
      if (dl.experts_held == 0) {
        w->layers_.push_back(dl);
        continue;
      }
      DMOE_ASSIGN_OR_RETURN(void* table, w->Alloc(ptrs.size() * sizeof(void*)));
      DMOE_CUDA_RETURN_IF_ERROR(
          cudaMemcpy(table, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
      const void* const* t = static_cast<const void* const*>(table);
      dl.expert_gate = t;
      dl.expert_up = t + e_count;
      dl.expert_down = t + 2 * e_count;
    }
    w->layers_.push_back(dl);
  }
  // cudaMemcpy from pageable (or memory-mapped) host memory may return before the DMA has
  // landed, and the worker's stream is not ordered after the legacy stream: wait here so the
  // first forward reads complete weights.
  DMOE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return w;
}

absl::StatusOr<std::unique_ptr<CudaWeights>> CudaWeights::Random(const model::ModelConfig& c,
                                                                 DType dtype, uint64_t seed,
                                                                 cudaStream_t stream) {
  std::unique_ptr<CudaWeights> w(new CudaWeights(c));
  uint64_t tensor = 0;
  auto fill = [&](void* p, DType dt, int64_t count, float mean, float std) {
    RandomFillArgs args;
    args.data = p;
    args.dtype = dt;
    args.count = count;
    args.seed = seed * 1000003ull + tensor++;
    args.mean = mean;
    args.std = std;
    return LaunchRandomFill(args, stream);
  };
  auto matrix = [&](int64_t rows, int64_t cols, DType dt, float std) -> absl::StatusOr<CudaMatrix> {
    const CudaMatrix m{nullptr, dt, rows, cols};
    DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(m.nbytes()));
    DMOE_RETURN_IF_ERROR(fill(p, dt, rows * cols, 0.0f, std));
    return CudaMatrix{p, dt, rows, cols};
  };
  auto linear = [&](int64_t rows, int64_t cols) {
    return matrix(rows, cols, dtype, 1.0f / std::sqrt(static_cast<float>(cols)));
  };
  auto vector = [&](int64_t n, float mean, float std) -> absl::StatusOr<const float*> {
    DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(n * sizeof(float)));
    DMOE_RETURN_IF_ERROR(fill(p, DType::kF32, n, mean, std));
    return static_cast<const float*>(p);
  };
  auto ffn = [&](int64_t width) -> absl::StatusOr<CudaFfn> {
    CudaFfn f;
    DMOE_ASSIGN_OR_RETURN(f.gate, linear(width, c.hidden_size));
    DMOE_ASSIGN_OR_RETURN(f.up, linear(width, c.hidden_size));
    DMOE_ASSIGN_OR_RETURN(f.down, linear(c.hidden_size, width));
    return f;
  };

  const int64_t h = c.hidden_size;
  DMOE_ASSIGN_OR_RETURN(w->embed_, matrix(c.vocab_size, h, dtype, 1.0f));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    CudaLayer dl;
    DMOE_ASSIGN_OR_RETURN(dl.input_norm, vector(h, 1.0f, 0.05f));
    DMOE_ASSIGN_OR_RETURN(dl.qkv, linear(c.qkv_width(), h));
    if (c.use_qk_norm) {
      DMOE_ASSIGN_OR_RETURN(dl.q_norm, vector(c.head_dim, 1.0f, 0.05f));
      DMOE_ASSIGN_OR_RETURN(dl.k_norm, vector(c.head_dim, 1.0f, 0.05f));
    }
    DMOE_ASSIGN_OR_RETURN(dl.o_proj, linear(h, c.q_width()));
    DMOE_ASSIGN_OR_RETURN(dl.post_norm, vector(h, 1.0f, 0.05f));
    if (!IsMoeLayer(c, l)) {
      DMOE_ASSIGN_OR_RETURN(dl.dense, ffn(c.intermediate_size));
    } else {
      const int64_t e_count = c.num_experts, width = c.moe_intermediate_size;
      DMOE_ASSIGN_OR_RETURN(
          dl.router, matrix(e_count, h, DType::kF32, 1.0f / std::sqrt(static_cast<float>(h))));
      if (c.moe_router_enable_expert_bias) {
        DMOE_ASSIGN_OR_RETURN(dl.expert_bias, vector(e_count, 0.0f, 0.1f));
      }
      if (c.num_shared_experts > 0) {
        DMOE_ASSIGN_OR_RETURN(dl.shared, ffn(c.num_shared_experts * width));
      }
      const size_t matrix_bytes = AlignUp(static_cast<size_t>(width * h) * DTypeSize(dtype));
      DMOE_ASSIGN_OR_RETURN(void* p, w->Alloc(matrix_bytes * 3 * e_count));
      char* base = static_cast<char*>(p);
      std::vector<const void*> ptrs(3 * e_count);
      for (int64_t e = 0; e < e_count; ++e) {
        for (int i = 0; i < 3; ++i) {
          char* m = base + (3 * e + i) * matrix_bytes;
          // gate/up are [I, H] (fan-in H), down is [H, I] (fan-in I).
          const float std = 1.0f / std::sqrt(static_cast<float>(i < 2 ? h : width));
          DMOE_RETURN_IF_ERROR(fill(m, dtype, width * h, 0.0f, std));
          ptrs[i * e_count + e] = m;
        }
      }
      DMOE_ASSIGN_OR_RETURN(void* table, w->Alloc(ptrs.size() * sizeof(void*)));
      DMOE_CUDA_RETURN_IF_ERROR(
          cudaMemcpy(table, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
      const void* const* t = static_cast<const void* const*>(table);
      dl.expert_gate = t;
      dl.expert_up = t + e_count;
      dl.expert_down = t + 2 * e_count;
      dl.expert_dtype = dtype;
      dl.experts_held = e_count;
    }
    w->held_.emplace_back(dl.experts_held, true);
    w->layers_.push_back(dl);
  }
  DMOE_ASSIGN_OR_RETURN(w->final_norm_, vector(h, 1.0f, 0.05f));
  DMOE_ASSIGN_OR_RETURN(w->lm_head_, linear(c.vocab_size, h));
  DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return w;
}

GroupedExpertsArgs LayerExpertsArgs(const CudaLayer& layer, const model::ModelConfig& config) {
  GroupedExpertsArgs args;
  args.hidden_size = config.hidden_size;
  args.intermediate_size = config.moe_intermediate_size;
  args.num_experts = static_cast<int32_t>(config.num_experts);
  args.gate = layer.expert_gate;
  args.up = layer.expert_up;
  args.down = layer.expert_down;
  args.weight_dtype = layer.expert_dtype;
  return args;
}

uint64_t CudaWeights::NonExpertBytes() const {
  const uint64_t h = static_cast<uint64_t>(config_.hidden_size);
  uint64_t bytes = lm_head_.nbytes() + h * sizeof(float);
  for (const CudaLayer& l : layers_) {
    bytes += 2 * h * sizeof(float) + l.qkv.nbytes() + l.o_proj.nbytes() + l.dense.nbytes() +
             l.router.nbytes() + l.shared.nbytes();
    if (l.q_norm) bytes += 2 * config_.head_dim * sizeof(float);
    if (l.expert_bias) bytes += config_.num_experts * sizeof(float);
  }
  return bytes;
}

uint64_t CudaWeights::ExpertBytes(int64_t l) const {
  if (layers_[l].expert_gate == nullptr) return 0;
  return 3ull * static_cast<uint64_t>(config_.moe_intermediate_size * config_.hidden_size) *
         DTypeSize(layers_[l].expert_dtype);
}

uint64_t CudaWeights::AllocatedBytes() const {
  uint64_t bytes = 0;
  for (const DeviceBuffer& b : buffers_) bytes += b.size();
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// KV cache

absl::StatusOr<std::unique_ptr<CudaKvPool>> CudaKvPool::Create(const KvPoolLayout& layout,
                                                               int64_t max_pages) {
  if (layout.num_layers <= 0 || layout.kv_width <= 0 || layout.page_tokens <= 0 || max_pages <= 0 ||
      max_pages > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("CudaKvPool: sizes must be positive");
  }
  std::unique_ptr<CudaKvPool> pool(new CudaKvPool());
  pool->layout_ = layout;
  pool->max_pages_ = max_pages;
  DMOE_ASSIGN_OR_RETURN(
      pool->storage_, DeviceBuffer::Allocate(static_cast<size_t>(max_pages) * layout.page_floats() *
                                             sizeof(float)));
  pool->free_.reserve(max_pages);
  for (int64_t p = max_pages - 1; p >= 0; --p) pool->free_.push_back(static_cast<int32_t>(p));
  return pool;
}

absl::Status CudaKvPool::Allocate(int64_t count, std::vector<int32_t>* pages) {
  if (count > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "device KV pool full: ", count, " pages wanted, ", free_.size(), " free of ", max_pages_));
  }
  for (int64_t i = 0; i < count; ++i) {
    pages->push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void CudaKvPool::Release(const std::vector<int32_t>& pages) {
  free_.insert(free_.end(), pages.rbegin(), pages.rend());
}

absl::Status CudaKvSequence::Reserve(int64_t new_length) {
  const int64_t pt = pool_->layout().page_tokens;
  const int64_t needed = (new_length + pt - 1) / pt - static_cast<int64_t>(pages_.size());
  if (needed <= 0) return absl::OkStatus();
  return pool_->Allocate(needed, &pages_);
}

void CudaKvSequence::Clear() {
  if (!pages_.empty()) pool_->Release(pages_);
  pages_.clear();
  length_ = 0;
}

// ---------------------------------------------------------------------------------------------
// CudaModel

absl::Status CudaModelOptions::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(name, " must be positive, got ", v));
    return absl::OkStatus();
  };
  DMOE_RETURN_IF_ERROR(positive("max_rows", max_rows));
  DMOE_RETURN_IF_ERROR(positive("max_segments", max_segments));
  DMOE_RETURN_IF_ERROR(positive("max_pages_per_segment", max_pages_per_segment));
  DMOE_RETURN_IF_ERROR(positive("lm_head_chunk_rows", lm_head_chunk_rows));
  // Grid dimensions and int32 metadata.
  if (max_rows > 65535) return absl::InvalidArgumentError("max_rows must be at most 65535");
  if (max_segments > 65535) return absl::InvalidArgumentError("max_segments must be at most 65535");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const CudaWeights& weights,
                                                             CudaKvPool* kv_pool,
                                                             const CudaModelOptions& options,
                                                             const DeviceContext& ctx) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  const model::ModelConfig& c = weights.config();
  for (int64_t l = 0; l < c.num_hidden_layers && options.host_experts == nullptr; ++l) {
    if (IsMoeLayer(c, l) && weights.layer(l).experts_held != c.num_experts) {
      return absl::FailedPreconditionError(
          absl::StrCat("CudaModel runs every routed expert locally; layer ", l, " holds ",
                       weights.layer(l).experts_held, " of ", c.num_experts));
    }
  }
  if (weights.lm_head().empty() || weights.embed().empty()) {
    return absl::FailedPreconditionError("CudaModel needs the embedding and lm_head weights");
  }
  if (kv_pool != nullptr && (kv_pool->layout().num_layers != c.num_hidden_layers ||
                             kv_pool->layout().kv_width != c.kv_width())) {
    return absl::InvalidArgumentError("CudaModel: KV pool geometry does not match the model");
  }
  std::unique_ptr<CudaModel> m(new CudaModel(weights, kv_pool, options, ctx));
  DMOE_RETURN_IF_ERROR(m->Allocate());
  return m;
}

CudaModel::~CudaModel() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  if (hook_copied_ != nullptr) cudaEventDestroy(hook_copied_);
}

absl::Status CudaModel::Allocate() {
  const model::ModelConfig& c = weights_.config();
  const size_t r = static_cast<size_t>(options_.max_rows);
  const size_t h = c.hidden_size;
  const size_t k = c.num_experts > 0 ? c.num_experts_per_tok : 0;
  const size_t e = c.num_experts;
  const size_t ffn_width =
      std::max<size_t>(c.intermediate_size, c.num_shared_experts * c.moe_intermediate_size);
  const size_t widest_input = std::max<size_t>({h, static_cast<size_t>(c.q_width()), ffn_width});
  auto alloc = [](DeviceBuffer* b, size_t bytes) -> absl::Status {
    DMOE_ASSIGN_OR_RETURN(*b, DeviceBuffer::Allocate(bytes));
    return absl::OkStatus();
  };
  DMOE_RETURN_IF_ERROR(alloc(&x_, r * h * 4));
  DMOE_RETURN_IF_ERROR(alloc(&h_, r * h * 4));
  DMOE_RETURN_IF_ERROR(alloc(&x16_, r * widest_input * 2));
  DMOE_RETURN_IF_ERROR(alloc(&qkv_, r * c.qkv_width() * 4));
  DMOE_RETURN_IF_ERROR(alloc(&attn_, r * c.q_width() * 4));
  DMOE_RETURN_IF_ERROR(alloc(&gate_, r * ffn_width * 4));
  DMOE_RETURN_IF_ERROR(alloc(&up_, r * ffn_width * 4));
  DMOE_RETURN_IF_ERROR(alloc(&act16_, r * ffn_width * 4));
  DMOE_RETURN_IF_ERROR(alloc(&router_logits_, r * e * 4));
  DMOE_RETURN_IF_ERROR(alloc(&slot_experts_, r * k * 4));
  DMOE_RETURN_IF_ERROR(alloc(&slot_weights_, r * k * 4));
  DMOE_RETURN_IF_ERROR(alloc(&expert_counts_, e * 4));
  DMOE_RETURN_IF_ERROR(alloc(&expert_offsets_, (e + 1) * 4));
  DMOE_RETURN_IF_ERROR(alloc(&sorted_slots_, r * k * 4));
  if (options_.host_experts == nullptr) {
    DMOE_RETURN_IF_ERROR(alloc(&expert_act_, r * k * c.moe_intermediate_size * 4));
  } else if (k > 0) {
    DMOE_ASSIGN_OR_RETURN(hook_hidden_, PinnedBuffer::Allocate(r * h * 4));
    DMOE_ASSIGN_OR_RETURN(hook_experts_, PinnedBuffer::Allocate(r * k * 4));
    DMOE_ASSIGN_OR_RETURN(hook_weights_, PinnedBuffer::Allocate(r * k * 4));
    DMOE_ASSIGN_OR_RETURN(hook_slot_out_, PinnedBuffer::Allocate(r * k * h * 4));
    DMOE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&hook_copied_, cudaEventDisableTiming));
  }
  DMOE_RETURN_IF_ERROR(alloc(&slot_out_, r * k * h * 4));
  DMOE_RETURN_IF_ERROR(alloc(&shared_out_, r * h * 4));
  DMOE_RETURN_IF_ERROR(alloc(&head_x_, r * h * 4));
  DMOE_RETURN_IF_ERROR(
      alloc(&logits_, std::min<size_t>(r, options_.lm_head_chunk_rows) * c.vocab_size * 4));
  DMOE_RETURN_IF_ERROR(alloc(&ids_, r * 4));
  DMOE_RETURN_IF_ERROR(alloc(&confidence_, r * 4));

  const std::vector<float> inv_freq = model::RopeInverseFrequencies(c.rotary_dim, c.rope_theta);
  DMOE_RETURN_IF_ERROR(alloc(&inv_freq_, std::max<size_t>(inv_freq.size(), 1) * 4));
  if (!inv_freq.empty()) {
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(inv_freq_.data(), inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));
  }
  // Metadata: ids, positions, 3 x KV-write lists (rows), segment arrays, page table.
  const size_t s = options_.max_segments;
  const size_t meta_ints = 5 * r + (s + 1) + 2 * s + s * options_.max_pages_per_segment;
  DMOE_RETURN_IF_ERROR(alloc(&meta_, meta_ints * 4));
  DMOE_ASSIGN_OR_RETURN(meta_host_, PinnedBuffer::Allocate(meta_ints * 4));
  DMOE_ASSIGN_OR_RETURN(result_host_,
                        PinnedBuffer::Allocate(r * 8 + c.num_hidden_layers * e * 4 + 64));
  if (options_.time_phases) {
    events_.resize(kEventsPerLayer * c.num_hidden_layers + kForwardEvents, nullptr);
    for (cudaEvent_t& ev : events_) DMOE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&ev));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Validate(const std::vector<CudaForwardSegment>& segments) const {
  const model::ModelConfig& c = weights_.config();
  int64_t rows = 0;
  if (segments.empty()) return absl::InvalidArgumentError("forward: no segments");
  if (static_cast<int64_t>(segments.size()) > options_.max_segments) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forward: ", segments.size(), " segments, max_segments is ", options_.max_segments));
  }
  // Without a pool no segment may bring a cache, so page_tokens is then never read.
  const model::SegmentCapacity capacity{
      .kv_cache = kv_pool_ != nullptr,
      .page_tokens = kv_pool_ != nullptr ? kv_pool_->layout().page_tokens : 1,
      .max_pages = options_.max_pages_per_segment};
  for (size_t i = 0; i < segments.size(); ++i) {
    DMOE_RETURN_IF_ERROR(
        model::ValidateForwardSegment(i, model::ShapeOf(segments[i]), c, capacity));
    rows += static_cast<int64_t>(segments[i].tokens.size());
  }
  if (rows > options_.max_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward: ", rows, " rows, max_rows is ", options_.max_rows));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Ffn(const CudaFfn& ffn, const float* x, int64_t rows, float* y,
                            bool accumulate) {
  const int64_t width = ffn.gate.rows, h = ffn.gate.cols;
  cudaStream_t stream = ctx_.stream;
  // Round x once for both gate and up when the weights are 16-bit.
  const void* x_in = x;
  DType x_dtype = DType::kF32;
  if (ffn.gate.dtype != DType::kF32) {
    DMOE_RETURN_IF_ERROR(LaunchConvertFromF32(x, rows * h, ffn.gate.dtype, x16_.data(), stream));
    x_in = x16_.data();
    x_dtype = ffn.gate.dtype;
  }
  MatMulArgs mm;
  mm.cublas = ctx_.cublas;
  mm.x = x_in;
  mm.x_dtype = x_dtype;
  mm.m = rows;
  mm.k = h;
  mm.n = width;
  mm.w = ffn.gate.data;
  mm.w_dtype = ffn.gate.dtype;
  mm.y = gate_.as<float>();
  DMOE_RETURN_IF_ERROR(LaunchMatMul(mm, stream));
  mm.w = ffn.up.data;
  mm.w_dtype = ffn.up.dtype;
  mm.y = up_.as<float>();
  DMOE_RETURN_IF_ERROR(LaunchMatMul(mm, stream));
  SwiGluArgs sw;
  sw.gate = gate_.as<float>();
  sw.up = up_.as<float>();
  sw.count = rows * width;
  sw.out = act16_.data();
  sw.out_dtype = ffn.down.dtype;
  DMOE_RETURN_IF_ERROR(LaunchSwiGlu(sw, stream));
  MatMulArgs down;
  down.cublas = ctx_.cublas;
  down.x = act16_.data();
  down.x_dtype = ffn.down.dtype;
  down.m = rows;
  down.k = width;
  down.n = ffn.down.rows;
  down.w = ffn.down.data;
  down.w_dtype = ffn.down.dtype;
  down.y = y;
  down.accumulate = accumulate;
  return LaunchMatMul(down, stream);
}

absl::Status CudaModel::HostExperts(int64_t l, int64_t rows, double* host_ms) {
  const model::ModelConfig& c = weights_.config();
  const int64_t h = c.hidden_size, top_k = c.num_experts_per_tok;
  const size_t n_slots = static_cast<size_t>(rows * top_k);
  const auto t0 = std::chrono::steady_clock::now();
  DMOE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(hook_copied_));
  model::Routing routing;
  routing.num_tokens = rows;
  routing.top_k = top_k;
  const int32_t* experts = hook_experts_.as<int32_t>();
  const float* weights = hook_weights_.as<float>();
  routing.experts.assign(experts, experts + n_slots);
  routing.weights.assign(weights, weights + n_slots);
  DMOE_RETURN_IF_ERROR(options_.host_experts->RunExperts(l, hook_hidden_.as<float>(), rows, h,
                                                         routing, hook_slot_out_.as<float>()));
  // The combine reads slot_out_ after this copy (stream order); the device's slot_weights_ are
  // the ones just copied out, so the weighting is the in-device path's.
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slot_out_.data(), hook_slot_out_.data(),
                                            n_slots * h * 4, cudaMemcpyHostToDevice, ctx_.stream));
  *host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                 .count();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// CudaModel::Forward and its phases, in the order Forward runs them. Every device call goes to
// ctx_.stream; the only host waits are HostExperts (for its copies) and the final synchronise.

// One forward's host-side layout, and where its metadata lies in meta_.
struct CudaModel::Batch {
  bool timed = false;  // record the phase events (time_phases, and the caller asked)
  int64_t num_segments = 0;
  // [num_segments + 1]: each segment's first input row and first output (proposal) row.
  std::vector<int32_t> row_begin, out_begin;
  int64_t rows = 0, out_rows = 0;
  int64_t max_rows_in_segment = 0;
  int64_t max_prefix_pages = 1;  // columns of the page table
  int64_t page_tokens = 1;
  KvPoolLayout kv_layout;  // zeros without a pool
  int64_t num_writes = 0;  // persisted rows, written to the KV cache in every layer
  // Device metadata (I32), regions of meta_: per row, per segment, and per persisted row.
  const int32_t* ids = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* seg_row_begin = nullptr;
  const int32_t* seg_start = nullptr;
  const int32_t* seg_block = nullptr;
  const int32_t* page_table = nullptr;  // [num_segments, max_prefix_pages]
  const int32_t* write_rows = nullptr;
  const int32_t* write_pages = nullptr;
  const int32_t* write_slots = nullptr;
  // [layers, experts] rows per expert in result_host_, for CudaForwardTimings (when timed).
  int32_t* expert_counts_host = nullptr;
};

absl::StatusOr<std::vector<CudaProposals>> CudaModel::Forward(
    std::vector<CudaForwardSegment>& segments, CudaForwardTimings* timings) {
  DMOE_RETURN_IF_ERROR(Validate(segments));
  const int64_t num_layers = weights_.config().num_hidden_layers;
  Batch b;
  b.timed = timings != nullptr && options_.time_phases;
  DMOE_RETURN_IF_ERROR(PlanBatch(segments, &b));
  DMOE_RETURN_IF_ERROR(UploadMetadata(segments, &b));

  DMOE_RETURN_IF_ERROR(RecordEvent(b, ForwardEventSlot(num_layers, ForwardEvent::kStart)));
  DMOE_RETURN_IF_ERROR(Embed(b));
  double host_experts_ms = 0;
  for (int64_t l = 0; l < num_layers; ++l) DMOE_RETURN_IF_ERROR(Layer(l, b, &host_experts_ms));

  // Final norm + lm_head over every segment's output rows (and their logits, where asked).
  // row_logits points into proposals: both stay put until the stream is synchronised.
  std::vector<CudaProposals> proposals(b.num_segments);
  const std::vector<float*> row_logits = LogitsDestinations(segments, b, &proposals);
  DMOE_RETURN_IF_ERROR(RecordEvent(b, ForwardEventSlot(num_layers, ForwardEvent::kHead)));
  DMOE_RETURN_IF_ERROR(GatherOutputRows(segments, b));
  if (b.out_rows > 0) {
    DMOE_RETURN_IF_ERROR(FinalNormAndLmHead(b, row_logits));
    DMOE_RETURN_IF_ERROR(DownloadProposals(b));
  }
  DMOE_RETURN_IF_ERROR(RecordEvent(b, ForwardEventSlot(num_layers, ForwardEvent::kEnd)));
  DMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(ctx_.stream));

  CommitAndCollect(segments, b, &proposals);
  if (b.timed) {
    DMOE_ASSIGN_OR_RETURN(*timings, PhaseTimings(b, host_experts_ms));
  } else if (timings != nullptr) {
    timings->host_experts_ms = host_experts_ms;
  }
  return proposals;
}

absl::Status CudaModel::PlanBatch(const std::vector<CudaForwardSegment>& segments, Batch* b) {
  b->num_segments = static_cast<int64_t>(segments.size());
  b->row_begin.assign(b->num_segments + 1, 0);
  b->out_begin.assign(b->num_segments + 1, 0);
  b->page_tokens = kv_pool_ != nullptr ? kv_pool_->layout().page_tokens : 1;
  b->kv_layout = kv_pool_ != nullptr ? kv_pool_->layout() : KvPoolLayout{};
  for (int64_t i = 0; i < b->num_segments; ++i) {
    const CudaForwardSegment& s = segments[i];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    b->row_begin[i + 1] = b->row_begin[i] + static_cast<int32_t>(n);
    b->out_begin[i + 1] = b->out_begin[i] + static_cast<int32_t>(n - s.logits_from);
    b->max_rows_in_segment = std::max(b->max_rows_in_segment, n);
    if (s.kv != nullptr) {
      DMOE_RETURN_IF_ERROR(s.kv->Reserve(s.start + s.persist));
      b->max_prefix_pages =
          std::max(b->max_prefix_pages, (s.start + b->page_tokens - 1) / b->page_tokens);
    }
  }
  b->rows = b->row_begin.back();
  b->out_rows = b->out_begin.back();
  b->expert_counts_host = reinterpret_cast<int32_t*>(result_host_.as<char>() + b->rows * 8);
  return absl::OkStatus();
}

absl::Status CudaModel::UploadMetadata(const std::vector<CudaForwardSegment>& segments, Batch* b) {
  // Packed into pinned memory, one copy to the device.
  const int64_t num_segments = b->num_segments, page_tokens = b->page_tokens;
  const std::vector<int32_t>& row_begin = b->row_begin;
  int32_t* host = meta_host_.as<int32_t>();
  int64_t cursor = 0;
  auto region = [&](int64_t count) {
    const int64_t at = cursor;
    cursor += count;
    return at;
  };
  const int64_t ids_at = region(b->rows), pos_at = region(b->rows);
  const int64_t row_begin_at = region(num_segments + 1), start_at = region(num_segments),
                block_at = region(num_segments);
  const int64_t pages_at = region(num_segments * b->max_prefix_pages);
  for (const CudaForwardSegment& s : segments) b->num_writes += s.persist;
  const int64_t write_rows_at = region(b->num_writes), write_pages_at = region(b->num_writes),
                write_slots_at = region(b->num_writes);
  int64_t w = 0;
  for (int64_t i = 0; i < num_segments; ++i) {
    const CudaForwardSegment& s = segments[i];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    for (int64_t j = 0; j < n; ++j) {
      host[ids_at + row_begin[i] + j] = s.tokens[j];
      host[pos_at + row_begin[i] + j] = static_cast<int32_t>(s.start + j);
    }
    host[start_at + i] = static_cast<int32_t>(s.start);
    host[block_at + i] = static_cast<int32_t>(std::min<int64_t>(s.attention_block, 1 << 30));
    for (int64_t p = 0; p < b->max_prefix_pages; ++p) {
      const bool held = s.kv != nullptr && p < static_cast<int64_t>(s.kv->pages().size());
      host[pages_at + i * b->max_prefix_pages + p] = held ? s.kv->pages()[p] : 0;
    }
    for (int64_t j = 0; j < s.persist; ++j) {
      const int64_t pos = s.start + j;
      host[write_rows_at + w] = row_begin[i] + static_cast<int32_t>(j);
      host[write_pages_at + w] = s.kv->pages()[pos / page_tokens];
      host[write_slots_at + w] = static_cast<int32_t>(pos % page_tokens);
      ++w;
    }
  }
  for (int64_t i = 0; i <= num_segments; ++i) host[row_begin_at + i] = row_begin[i];
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_.data(), host, cursor * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, ctx_.stream));
  const int32_t* meta = meta_.as<int32_t>();
  b->ids = meta + ids_at;
  b->positions = meta + pos_at;
  b->seg_row_begin = meta + row_begin_at;
  b->seg_start = meta + start_at;
  b->seg_block = meta + block_at;
  b->page_table = meta + pages_at;
  b->write_rows = meta + write_rows_at;
  b->write_pages = meta + write_pages_at;
  b->write_slots = meta + write_slots_at;
  return absl::OkStatus();
}

absl::Status CudaModel::RecordEvent(const Batch& b, size_t slot) {
  if (b.timed) DMOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[slot], ctx_.stream));
  return absl::OkStatus();
}

absl::Status CudaModel::Embed(const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  EmbeddingArgs emb;
  emb.ids = b.ids;
  emb.num_tokens = b.rows;
  emb.table = weights_.embed().data;
  emb.table_dtype = weights_.embed().dtype;
  emb.vocab_size = c.vocab_size;
  emb.hidden = c.hidden_size;
  emb.out = x_.as<float>();
  return LaunchEmbedding(emb, ctx_.stream);
}

absl::Status CudaModel::Layer(int64_t l, const Batch& b, double* host_experts_ms) {
  const CudaLayer& lw = weights_.layer(l);
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kBegin)));
  DMOE_RETURN_IF_ERROR(QkvProjection(lw, b));
  DMOE_RETURN_IF_ERROR(AttendAndCacheKv(l, b));
  DMOE_RETURN_IF_ERROR(OutputProjection(lw, b));
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kAttentionDone)));
  if (IsMoeLayer(weights_.config(), l)) return MoeFfn(l, b, host_experts_ms);
  // No routing or experts: their spans stay empty, so every layer has the same four events.
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kRoutingDone)));
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kExpertsDone)));
  return Ffn(lw.dense, h_.as<float>(), b.rows, x_.as<float>(), /*accumulate=*/true);
}

absl::Status CudaModel::NormHidden(const float* weight, const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  RmsNormArgs norm;
  norm.x = x_.as<float>();
  norm.rows = b.rows;
  norm.n = c.hidden_size;
  norm.weight = weight;
  norm.eps = static_cast<float>(c.rms_norm_eps);
  norm.y = h_.as<float>();
  return LaunchRmsNorm(norm, ctx_.stream);
}

MatMulArgs CudaModel::TimesWeight(const float* x, int64_t rows, const CudaMatrix& w,
                                  float* y) const {
  MatMulArgs mm;
  mm.cublas = ctx_.cublas;
  mm.x = x;
  mm.m = rows;
  mm.k = w.cols;
  mm.w = w.data;
  mm.w_dtype = w.dtype;
  mm.n = w.rows;
  mm.y = y;
  mm.x_scratch = x16_.data();
  return mm;
}

absl::Status CudaModel::QkvProjection(const CudaLayer& lw, const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  DMOE_RETURN_IF_ERROR(NormHidden(lw.input_norm, b));

  DMOE_RETURN_IF_ERROR(
      LaunchMatMul(TimesWeight(h_.as<float>(), b.rows, lw.qkv, qkv_.as<float>()), ctx_.stream));

  QkNormRopeArgs rope;
  rope.qkv = qkv_.as<float>();
  rope.m = b.rows;
  rope.row_stride = c.qkv_width();
  rope.positions = b.positions;
  rope.num_heads = c.num_attention_heads;
  rope.num_kv_heads = c.num_key_value_heads;
  rope.head_dim = c.head_dim;
  rope.rotary_dim = c.rotary_dim;
  rope.q_norm = lw.q_norm;
  rope.k_norm = lw.k_norm;
  rope.eps = static_cast<float>(c.rms_norm_eps);
  rope.inv_freq = inv_freq_.as<float>();
  return LaunchQkNormRope(rope, ctx_.stream);
}

absl::Status CudaModel::AttendAndCacheKv(int64_t l, const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  const int64_t d = c.head_dim;
  AttentionArgs att;
  att.qkv = qkv_.as<float>();
  att.qkv_stride = c.qkv_width();
  att.out = attn_.as<float>();
  att.out_stride = c.q_width();
  att.num_segments = static_cast<int32_t>(b.num_segments);
  att.seg_row_begin = b.seg_row_begin;
  att.seg_start = b.seg_start;
  att.seg_block = b.seg_block;
  att.page_table = b.page_table;
  att.max_pages_per_segment = static_cast<int32_t>(b.max_prefix_pages);
  att.kv_pool = kv_pool_ != nullptr ? kv_pool_->data() : nullptr;
  att.kv = b.kv_layout;
  att.layer = l;
  att.max_segment_rows = static_cast<int32_t>(b.max_rows_in_segment);
  att.num_heads = static_cast<int32_t>(c.num_attention_heads);
  att.num_kv_heads = static_cast<int32_t>(c.num_key_value_heads);
  att.head_dim = static_cast<int32_t>(d);
  att.scale = 1.0f / std::sqrt(static_cast<float>(d));
  DMOE_RETURN_IF_ERROR(LaunchAttention(att, ctx_.stream));
  if (b.num_writes == 0) return absl::OkStatus();

  // After the attention has read this layer's in-flight rows (stream order).
  KvCacheWriteArgs kw;
  kw.qkv = qkv_.as<float>();
  kw.qkv_stride = c.qkv_width();
  kw.k_offset = c.q_width();
  kw.v_offset = c.q_width() + c.kv_width();
  kw.kv_pool = kv_pool_->data();
  kw.kv = b.kv_layout;
  kw.layer = l;
  kw.num_rows = static_cast<int32_t>(b.num_writes);
  kw.rows = b.write_rows;
  kw.pages = b.write_pages;
  kw.slots = b.write_slots;
  return LaunchKvCacheWrite(kw, ctx_.stream);
}

absl::Status CudaModel::OutputProjection(const CudaLayer& lw, const Batch& b) {
  MatMulArgs o = TimesWeight(attn_.as<float>(), b.rows, lw.o_proj, x_.as<float>());
  o.accumulate = true;  // x += attn @ Wo^T
  DMOE_RETURN_IF_ERROR(LaunchMatMul(o, ctx_.stream));
  return NormHidden(lw.post_norm, b);
}

absl::Status CudaModel::MoeFfn(int64_t l, const Batch& b, double* host_experts_ms) {
  const CudaLayer& lw = weights_.layer(l);
  DMOE_RETURN_IF_ERROR(Route(lw, b));
  if (options_.host_experts != nullptr) {
    DMOE_RETURN_IF_ERROR(HostRoutedExperts(l, b, host_experts_ms));
  } else {
    DMOE_RETURN_IF_ERROR(DeviceRoutedExperts(l, b));
  }
  return Combine(lw, b);
}

absl::Status CudaModel::Route(const CudaLayer& lw, const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  DMOE_RETURN_IF_ERROR(LaunchMatMul(
      TimesWeight(h_.as<float>(), b.rows, lw.router, router_logits_.as<float>()), ctx_.stream));

  MoeRouterArgs route;
  route.logits = router_logits_.as<float>();
  route.num_tokens = b.rows;
  route.bias = lw.expert_bias;
  route.num_experts = static_cast<int32_t>(c.num_experts);
  route.top_k = static_cast<int32_t>(c.num_experts_per_tok);
  route.n_group = static_cast<int32_t>(c.n_group);
  route.topk_group = static_cast<int32_t>(c.topk_group);
  route.norm_topk_prob = c.norm_topk_prob;
  route.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  route.experts = slot_experts_.as<int32_t>();
  route.weights = slot_weights_.as<float>();
  return LaunchMoeRouter(route, ctx_.stream);
}

absl::Status CudaModel::SharedExpert(const CudaLayer& lw, const Batch& b) {
  if (lw.shared.empty()) return absl::OkStatus();
  return Ffn(lw.shared, h_.as<float>(), b.rows, shared_out_.as<float>(), /*accumulate=*/false);
}

absl::Status CudaModel::HostRoutedExperts(int64_t l, const Batch& b, double* host_experts_ms) {
  // Routed experts on the host executor (remote shards); the shared expert computes on the
  // device meanwhile (HostExperts waits only for the copies, not for the stream).
  const model::ModelConfig& c = weights_.config();
  const size_t n_slots = static_cast<size_t>(b.rows * c.num_experts_per_tok);
  cudaStream_t stream = ctx_.stream;
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      hook_hidden_.data(), h_.data(), b.rows * c.hidden_size * 4, cudaMemcpyDeviceToHost, stream));
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hook_experts_.data(), slot_experts_.data(), n_slots * 4,
                                            cudaMemcpyDeviceToHost, stream));
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hook_weights_.data(), slot_weights_.data(), n_slots * 4,
                                            cudaMemcpyDeviceToHost, stream));
  DMOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(hook_copied_, stream));
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kRoutingDone)));
  DMOE_RETURN_IF_ERROR(SharedExpert(weights_.layer(l), b));
  double host_ms = 0;
  DMOE_RETURN_IF_ERROR(HostExperts(l, b.rows, &host_ms));
  *host_experts_ms += host_ms;
  if (b.timed) {
    // The device never grouped the slots: count the routing copied out above.
    int32_t* counts = b.expert_counts_host + l * c.num_experts;
    std::fill(counts, counts + c.num_experts, 0);
    const int32_t* slot_experts = hook_experts_.as<int32_t>();
    for (size_t i = 0; i < n_slots; ++i) {
      if (slot_experts[i] >= 0 && slot_experts[i] < c.num_experts) ++counts[slot_experts[i]];
    }
  }
  return RecordEvent(b, LayerEventSlot(l, LayerEvent::kExpertsDone));
}

absl::Status CudaModel::DeviceRoutedExperts(int64_t l, const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  const CudaLayer& lw = weights_.layer(l);
  const int64_t top_k = c.num_experts_per_tok;
  MoeGroupArgs group;
  group.experts = slot_experts_.as<int32_t>();
  group.num_slots = b.rows * top_k;
  group.num_experts = static_cast<int32_t>(c.num_experts);
  group.counts = expert_counts_.as<int32_t>();
  group.offsets = expert_offsets_.as<int32_t>();
  group.sorted_slots = sorted_slots_.as<int32_t>();
  DMOE_RETURN_IF_ERROR(LaunchMoeGroup(group, ctx_.stream));
  if (b.timed) {
    DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(b.expert_counts_host + l * c.num_experts,
                                              expert_counts_.data(), c.num_experts * 4,
                                              cudaMemcpyDeviceToHost, ctx_.stream));
  }
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kRoutingDone)));

  GroupedExpertsArgs ex = LayerExpertsArgs(lw, c);
  ex.hidden = h_.as<float>();
  ex.top_k = static_cast<int32_t>(top_k);
  ex.num_slots = b.rows * top_k;
  ex.offsets = expert_offsets_.as<int32_t>();
  ex.sorted_slots = sorted_slots_.as<int32_t>();
  ex.act = expert_act_.as<float>();
  ex.slot_out = slot_out_.as<float>();
  DMOE_RETURN_IF_ERROR(LaunchGroupedExperts(ex, ctx_.stream));
  DMOE_RETURN_IF_ERROR(RecordEvent(b, LayerEventSlot(l, LayerEvent::kExpertsDone)));
  return SharedExpert(lw, b);
}

absl::Status CudaModel::Combine(const CudaLayer& lw, const Batch& b) {
  const model::ModelConfig& c = weights_.config();
  MoeCombineArgs combine;
  combine.x = x_.as<float>();
  combine.slot_out = slot_out_.as<float>();
  combine.weights = slot_weights_.as<float>();
  combine.shared = !lw.shared.empty() ? shared_out_.as<float>() : nullptr;
  combine.num_tokens = b.rows;
  combine.hidden = c.hidden_size;
  combine.top_k = static_cast<int32_t>(c.num_experts_per_tok);
  return LaunchMoeCombine(combine, ctx_.stream);
}

std::vector<float*> CudaModel::LogitsDestinations(const std::vector<CudaForwardSegment>& segments,
                                                  const Batch& b,
                                                  std::vector<CudaProposals>* proposals) const {
  const int64_t vocab = weights_.config().vocab_size;
  std::vector<float*> row_logits;  // empty: no segment asked
  for (int64_t i = 0; i < b.num_segments; ++i) {
    if (!segments[i].return_logits) continue;
    const int64_t n_out = b.out_begin[i + 1] - b.out_begin[i];
    if (row_logits.empty()) row_logits.assign(b.out_rows, nullptr);
    (*proposals)[i].logits.resize(static_cast<size_t>(n_out * vocab));
    for (int64_t r = 0; r < n_out; ++r) {
      row_logits[b.out_begin[i] + r] = (*proposals)[i].logits.data() + r * vocab;
    }
  }
  return row_logits;
}

absl::Status CudaModel::GatherOutputRows(const std::vector<CudaForwardSegment>& segments,
                                         const Batch& b) {
  const int64_t h = weights_.config().hidden_size;
  float* head_x = head_x_.as<float>();
  const float* x = x_.as<float>();
  for (int64_t i = 0; i < b.num_segments; ++i) {
    const int64_t n_out = b.out_begin[i + 1] - b.out_begin[i];
    if (n_out == 0) continue;
    DMOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(head_x + static_cast<int64_t>(b.out_begin[i]) * h,
                        x + (static_cast<int64_t>(b.row_begin[i]) + segments[i].logits_from) * h,
                        n_out * h * sizeof(float), cudaMemcpyDeviceToDevice, ctx_.stream));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::FinalNormAndLmHead(const Batch& b, const std::vector<float*>& row_logits) {
  const model::ModelConfig& c = weights_.config();
  float* head_x = head_x_.as<float>();
  RmsNormArgs fnorm;
  fnorm.x = head_x;
  fnorm.rows = b.out_rows;
  fnorm.n = c.hidden_size;
  fnorm.weight = weights_.final_norm();
  fnorm.eps = static_cast<float>(c.rms_norm_eps);
  fnorm.y = head_x;
  DMOE_RETURN_IF_ERROR(LaunchRmsNorm(fnorm, ctx_.stream));
  LmHeadTop1Args head;
  head.cublas = ctx_.cublas;
  head.x = head_x;
  head.m = b.out_rows;
  head.hidden = c.hidden_size;
  head.w = weights_.lm_head().data;
  head.w_dtype = weights_.lm_head().dtype;
  head.vocab = c.vocab_size;
  head.logits_scratch = logits_.as<float>();
  head.scratch_rows = options_.lm_head_chunk_rows;
  head.x_scratch = x16_.data();
  head.ids = ids_.as<int32_t>();
  head.confidence = confidence_.as<float>();
  head.row_logits_host = row_logits.empty() ? nullptr : row_logits.data();
  return LaunchLmHeadTop1(head, ctx_.stream);
}

absl::Status CudaModel::DownloadProposals(const Batch& b) {
  // result_host_: ids [out_rows], then confidences [out_rows].
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(result_host_.data(), ids_.data(), b.out_rows * 4,
                                            cudaMemcpyDeviceToHost, ctx_.stream));
  DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(result_host_.as<char>() + b.out_rows * 4,
                                            confidence_.data(), b.out_rows * 4,
                                            cudaMemcpyDeviceToHost, ctx_.stream));
  return absl::OkStatus();
}

void CudaModel::CommitAndCollect(std::vector<CudaForwardSegment>& segments, const Batch& b,
                                 std::vector<CudaProposals>* proposals) const {
  const int32_t* ids = result_host_.as<int32_t>();
  const float* conf = reinterpret_cast<const float*>(result_host_.as<char>() + b.out_rows * 4);
  for (int64_t i = 0; i < b.num_segments; ++i) {
    CudaForwardSegment& s = segments[i];
    if (s.kv != nullptr) s.kv->Commit(s.start + s.persist);
    (*proposals)[i].ids.assign(ids + b.out_begin[i], ids + b.out_begin[i + 1]);
    (*proposals)[i].confidence.assign(conf + b.out_begin[i], conf + b.out_begin[i + 1]);
  }
}

absl::StatusOr<CudaForwardTimings> CudaModel::PhaseTimings(const Batch& b,
                                                           double host_experts_ms) const {
  const model::ModelConfig& c = weights_.config();
  const int64_t num_layers = c.num_hidden_layers;
  auto elapsed = [&](size_t a, size_t z) -> absl::StatusOr<double> {
    float ms = 0;
    DMOE_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events_[a], events_[z]));
    return static_cast<double>(ms);
  };
  const size_t start = ForwardEventSlot(num_layers, ForwardEvent::kStart);
  const size_t head = ForwardEventSlot(num_layers, ForwardEvent::kHead);
  const size_t end = ForwardEventSlot(num_layers, ForwardEvent::kEnd);
  CudaForwardTimings t;
  DMOE_ASSIGN_OR_RETURN(t.total_ms, elapsed(start, end));
  DMOE_ASSIGN_OR_RETURN(t.head_ms, elapsed(head, end));
  for (int64_t l = 0; l < num_layers; ++l) {
    auto slot = [l](LayerEvent e) { return LayerEventSlot(l, e); };
    DMOE_ASSIGN_OR_RETURN(const double attention,
                          elapsed(slot(LayerEvent::kBegin), slot(LayerEvent::kAttentionDone)));
    DMOE_ASSIGN_OR_RETURN(const double routing, elapsed(slot(LayerEvent::kAttentionDone),
                                                        slot(LayerEvent::kRoutingDone)));
    DMOE_ASSIGN_OR_RETURN(const double experts,
                          elapsed(slot(LayerEvent::kRoutingDone), slot(LayerEvent::kExpertsDone)));
    // The rest of the layer runs until the next layer (or the head) begins.
    const size_t next = l + 1 < num_layers ? LayerEventSlot(l + 1, LayerEvent::kBegin) : head;
    DMOE_ASSIGN_OR_RETURN(const double rest, elapsed(slot(LayerEvent::kExpertsDone), next));
    t.attention_ms += attention;
    t.experts_ms += experts;
    t.other_moe_ms += routing + rest;
    if (IsMoeLayer(c, l)) {
      const int32_t* counts = b.expert_counts_host + l * c.num_experts;
      int64_t touched = 0;
      for (int64_t e = 0; e < c.num_experts; ++e) touched += counts[e] > 0;
      t.touched_experts.push_back(touched);
    }
  }
  t.host_experts_ms = host_experts_ms;
  return t;
}

}  // namespace dmoe::gpu
