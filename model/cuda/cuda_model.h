// The LLaDA2.0 / Ling 2.0 forward pass on one GPU (MODEL-SPEC.md §1.2-1.3): the device form of
// model::Model::Forward over the same segments, with weights, activations and the paged KV
// cache resident on the device. What comes back is per output row the greedy proposal (top-1
// id and its softmax probability, LaunchLmHeadTop1); logits leave the GPU only for segments
// that ask for them (return_logits: requests that sample, which the host does).
//
// Everything here is owned by the DeviceWorker thread of its device (STYLE.md §8): create,
// use and destroy these objects inside DeviceWorker::Run.
//
// Differences from the CPU backends, all documented in docs/cuda.md: dense GEMM inputs are
// rounded to the weight dtype (matmul.h); cuBLAS may pick a different reduction split for a
// different batch size, so unlike the CPU backends a forward is not bit-identical across batch
// compositions (the custom kernels are); only greedy (temperature 0) proposals are computed on
// the device (sampling runs on the host over returned logits).
#ifndef DMOE_MODEL_CUDA_CUDA_MODEL_H_
#define DMOE_MODEL_CUDA_CUDA_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "model/config.h"
#include "model/cuda/device_buffer.h"
#include "model/cuda/device_worker.h"
#include "model/cuda/grouped_experts.h"
#include "model/cuda/kv_layout.h"
#include "model/cuda/matmul.h"
#include "model/expert_executor.h"
#include "model/weights.h"

namespace dmoe::gpu {

// A matrix in device memory, PyTorch [out, in] layout. Not owned.
struct CudaMatrix {
  const void* data = nullptr;
  DType dtype = DType::kBF16;
  int64_t rows = 0;
  int64_t cols = 0;
  bool empty() const { return data == nullptr; }
  uint64_t nbytes() const { return static_cast<uint64_t>(rows * cols) * DTypeSize(dtype); }
};

struct CudaFfn {
  CudaMatrix gate;  // [I, H]
  CudaMatrix up;    // [I, H]
  CudaMatrix down;  // [H, I]
  bool empty() const { return gate.empty(); }
  uint64_t nbytes() const { return gate.nbytes() + up.nbytes() + down.nbytes(); }
};

struct CudaLayer {
  const float* input_norm = nullptr;   // F32 [H]
  CudaMatrix qkv;                      // [(Nq + 2 Nkv) D, H]
  const float* q_norm = nullptr;       // F32 [D] or null
  const float* k_norm = nullptr;       // F32 [D] or null
  CudaMatrix o_proj;                   // [H, Nq D]
  const float* post_norm = nullptr;    // F32 [H]
  CudaFfn dense;                       // dense layers only
  CudaMatrix router;                   // MoE layers: [E, H] (F32 in LLaDA2 checkpoints)
  const float* expert_bias = nullptr;  // F32 [E] or null
  CudaFfn shared;                      // may be empty
  // Device arrays [E] of device pointers to each routed expert's matrices (null: not held).
  const void* const* expert_gate = nullptr;
  const void* const* expert_up = nullptr;
  const void* const* expert_down = nullptr;
  DType expert_dtype = DType::kBF16;
  int64_t experts_held = 0;  // experts with weights on this device
};

// GroupedExperts arguments for `layer`'s routed experts under `config` (shapes, expert count,
// pointer tables, dtype); the caller adds the rows, grouping, scratch and output.
GroupedExpertsArgs LayerExpertsArgs(const CudaLayer& layer, const model::ModelConfig& config);

// Device-resident weights of one model. Owned by the DeviceWorker thread.
class CudaWeights {
 public:
  // Copies `host` (every tensor it holds; experts it does not hold stay null) to the current
  // device. `config` must be the one the weights were loaded for.
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Upload(const model::ModelConfig& config,
                                                             const model::ModelWeights& host);
  // Random weights generated on the device (LaunchRandomFill), the same initialisation scales
  // as tools/checkpoint_gen (linear N(0, 1/fan_in)-like, norms 1 +- 0.05, embeddings unit,
  // router F32): no host copy of the model exists. All experts are held. For benchmarks.
  static absl::StatusOr<std::unique_ptr<CudaWeights>> Random(const model::ModelConfig& config,
                                                             DType dtype, uint64_t seed,
                                                             cudaStream_t stream);

  const model::ModelConfig& config() const { return config_; }
  const CudaMatrix& embed() const { return embed_; }
  const CudaLayer& layer(int64_t l) const { return layers_[l]; }
  // Whether routed expert `e` of layer `l` has weights on this device (host-side copy of the
  // pointer table's non-null entries, for checking ids before a kernel reads the table).
  bool HoldsExpert(int64_t l, int64_t e) const {
    return l >= 0 && l < static_cast<int64_t>(held_.size()) && e >= 0 &&
           e < static_cast<int64_t>(held_[l].size()) && held_[l][e];
  }
  const float* final_norm() const { return final_norm_; }
  const CudaMatrix& lm_head() const { return lm_head_; }

  // Bytes of every weight a forward reads regardless of routing: attention, norms, routers,
  // shared experts, dense FFNs, lm_head (embedding rows are gathered, so not counted).
  uint64_t NonExpertBytes() const;
  // Bytes of one routed expert of layer `l` (gate + up + down).
  uint64_t ExpertBytes(int64_t l) const;
  // Device memory held.
  uint64_t AllocatedBytes() const;

 private:
  explicit CudaWeights(const model::ModelConfig& config) : config_(config) {}
  // Allocates `bytes` and keeps the buffer.
  absl::StatusOr<void*> Alloc(size_t bytes);

  model::ModelConfig config_;
  std::vector<DeviceBuffer> buffers_;
  CudaMatrix embed_;
  std::vector<CudaLayer> layers_;
  std::vector<std::vector<bool>> held_;  // [layer][expert]
  const float* final_norm_ = nullptr;
  CudaMatrix lm_head_;
};

// The device KV pool (KvPoolLayout): all pages allocated up front. Owned by the DeviceWorker
// thread (so page bookkeeping needs no lock).
class CudaKvPool {
 public:
  // INVALID_ARGUMENT for non-positive sizes; RESOURCE_EXHAUSTED when the pool does not fit.
  static absl::StatusOr<std::unique_ptr<CudaKvPool>> Create(const KvPoolLayout& layout,
                                                            int64_t max_pages);
  const KvPoolLayout& layout() const { return layout_; }
  float* data() const { return storage_.as<float>(); }
  int64_t max_pages() const { return max_pages_; }
  int64_t pages_in_use() const { return max_pages_ - static_cast<int64_t>(free_.size()); }
  // Appends `count` page ids to `pages`; RESOURCE_EXHAUSTED (nothing taken) when too few are
  // free.
  absl::Status Allocate(int64_t count, std::vector<int32_t>* pages);
  void Release(const std::vector<int32_t>& pages);

 private:
  CudaKvPool() = default;
  KvPoolLayout layout_;
  int64_t max_pages_ = 0;
  DeviceBuffer storage_;
  std::vector<int32_t> free_;
};

// One sequence's cached prefix [0, length) in a CudaKvPool. Thread-compatible (device thread).
class CudaKvSequence {
 public:
  explicit CudaKvSequence(CudaKvPool* pool) : pool_(pool) {}
  ~CudaKvSequence() { Clear(); }
  CudaKvSequence(const CudaKvSequence&) = delete;
  CudaKvSequence& operator=(const CudaKvSequence&) = delete;

  int64_t length() const { return length_; }
  const std::vector<int32_t>& pages() const { return pages_; }
  // Makes room for positions [0, new_length); RESOURCE_EXHAUSTED when the pool is full.
  absl::Status Reserve(int64_t new_length);
  void Commit(int64_t new_length) { length_ = new_length; }
  void Clear();

 private:
  CudaKvPool* pool_;
  std::vector<int32_t> pages_;
  int64_t length_ = 0;
};

// Same meaning as model::ForwardSegment, with a device KV cache.
struct CudaForwardSegment {
  CudaKvSequence* kv = nullptr;  // null: start 0, persist 0
  int64_t start = 0;
  std::vector<int32_t> tokens;
  int64_t persist = 0;
  int64_t attention_block = 32;
  int64_t logits_from = 0;
  bool return_logits = false;  // also copy the rows' F32 logits to the host (CudaProposals)
};

// Greedy proposals of one segment's rows [logits_from, tokens.size()).
struct CudaProposals {
  std::vector<int32_t> ids;
  std::vector<float> confidence;
  std::vector<float> logits;  // F32 [rows, vocab] with return_logits, else empty
};

// Device time of one forward, measured with CUDA events (CudaModelOptions::time_phases).
struct CudaForwardTimings {
  double total_ms = 0;
  double attention_ms = 0;  // norms, QKV GEMM, QK-norm/RoPE, attention, KV write, o_proj
  double experts_ms = 0;    // the grouped routed-expert GEMMs only
  double other_moe_ms = 0;  // router GEMM + routing + grouping, shared expert, combine, dense FFN
  double head_ms = 0;       // final norm + lm_head + top-1
  // Per MoE layer: experts that received at least one row (the roofline's expert bytes).
  std::vector<int64_t> touched_experts;
  // With CudaModelOptions::host_experts: wall time of the host round trips (copy out,
  // RunExperts, copy back), summed over layers. experts_ms is then the device idle gap.
  double host_experts_ms = 0;
};

struct CudaModelOptions {
  int64_t max_rows = 1024;  // tokens per forward (all segments)
  int64_t max_segments = 256;
  int64_t max_pages_per_segment = 1024;  // prefix capacity per segment: pages x page_tokens
  int64_t lm_head_chunk_rows = 64;       // rows of F32 logits held on the device at once
  bool time_phases = false;              // record events per phase (small overhead)
  // Host expert hook (an attention replica: routed experts run on remote shards). When set,
  // every MoE layer copies its routed rows (the post-attention-norm hidden states, F32 [n, H])
  // and the device router's choice (experts and weights per slot) to pinned host memory, calls
  // host_experts->RunExperts on the device thread, copies the slot outputs back and runs the
  // same MoeCombine as the in-device path (same slot order and arithmetic as the CPU model).
  // The model then needs no routed-expert weights on the device (CudaWeights::Upload of host
  // weights loaded with load_experts = false); the expert pointers are never read. The
  // executor must not call back into the DeviceWorker. Not owned; must outlive the model.
  model::ExpertExecutor* host_experts = nullptr;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Owned by the DeviceWorker thread; one Forward at a time (scratch is reused).
class CudaModel {
 public:
  // Allocates scratch for options.max_rows rows. `weights` and `kv_pool` (may be null when no
  // segment will use a cache) must outlive the model, and belong to the same device.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(const CudaWeights& weights,
                                                           CudaKvPool* kv_pool,
                                                           const CudaModelOptions& options,
                                                           const DeviceContext& ctx);
  ~CudaModel();

  // Runs all segments as one batch on ctx.stream and waits for it. Per segment, the greedy
  // proposals of rows [logits_from, n). Errors: INVALID_ARGUMENT as Model::Forward (and for
  // more rows / segments / prefix pages than the options allow); RESOURCE_EXHAUSTED when the
  // KV pool cannot hold the persisted tokens; CUDA / cuBLAS errors.
  absl::StatusOr<std::vector<CudaProposals>> Forward(std::vector<CudaForwardSegment>& segments,
                                                     CudaForwardTimings* timings = nullptr);

 private:
  CudaModel(const CudaWeights& weights, CudaKvPool* kv_pool, const CudaModelOptions& options,
            const DeviceContext& ctx)
      : weights_(weights), kv_pool_(kv_pool), options_(options), ctx_(ctx) {}
  // One forward's layout and device metadata (defined in the .cc).
  struct Batch;

  absl::Status Allocate();
  // The batch limits of the options, then model::ValidateForwardSegment per segment.
  absl::Status Validate(const std::vector<CudaForwardSegment>& segments) const;

  // Forward's phases, in the order it runs them; all enqueue on ctx_.stream.
  // Row and output layout of the batch; reserves the KV pages the segments persist into.
  absl::Status PlanBatch(const std::vector<CudaForwardSegment>& segments, Batch* b);
  // Packs ids, positions, segment arrays, page table and KV write lists into meta_.
  absl::Status UploadMetadata(const std::vector<CudaForwardSegment>& segments, Batch* b);
  // Records events_[slot] when the batch is timed.
  absl::Status RecordEvent(const Batch& b, size_t slot);
  absl::Status Embed(const Batch& b);  // x_ = embedding rows of the ids
  // One decoder layer: the attention block, then the dense FFN or the MoE block, into x_.
  absl::Status Layer(int64_t l, const Batch& b, double* host_experts_ms);
  absl::Status NormHidden(const float* weight, const Batch& b);  // h_ = RmsNorm(x_) * weight
  // Attention block: input norm, QKV GEMM, QK-norm + RoPE into qkv_; block attention into
  // attn_ and the persisted rows' K/V into the pool; x_ += o_proj, then h_ = post norm.
  absl::Status QkvProjection(const CudaLayer& lw, const Batch& b);
  absl::Status AttendAndCacheKv(int64_t l, const Batch& b);
  absl::Status OutputProjection(const CudaLayer& lw, const Batch& b);
  // MoE block: router, routed experts (on the device or the host hook), shared expert, and the
  // combine into x_.
  absl::Status MoeFfn(int64_t l, const Batch& b, double* host_experts_ms);
  // Router GEMM and top-k routing into slot_experts_ / slot_weights_.
  absl::Status Route(const CudaLayer& lw, const Batch& b);
  absl::Status SharedExpert(const CudaLayer& lw, const Batch& b);  // shared_out_, if any
  // Copies the routed rows and routing out, overlaps the shared expert with HostExperts.
  absl::Status HostRoutedExperts(int64_t l, const Batch& b, double* host_experts_ms);
  // Groups the slots by expert and runs the grouped expert GEMMs into slot_out_.
  absl::Status DeviceRoutedExperts(int64_t l, const Batch& b);
  absl::Status Combine(const CudaLayer& lw, const Batch& b);  // x_ += routed + shared
  // Per output row, where its logits go on the host (inside `proposals`); empty when no
  // segment returns logits.
  std::vector<float*> LogitsDestinations(const std::vector<CudaForwardSegment>& segments,
                                         const Batch& b,
                                         std::vector<CudaProposals>* proposals) const;
  // Copies every segment's output rows of x_ into head_x_, back to back.
  absl::Status GatherOutputRows(const std::vector<CudaForwardSegment>& segments, const Batch& b);
  absl::Status FinalNormAndLmHead(const Batch& b, const std::vector<float*>& row_logits);
  absl::Status DownloadProposals(const Batch& b);  // ids and confidences to result_host_
  // After the stream is synchronised: commits the persisted KV and fills the proposals.
  void CommitAndCollect(std::vector<CudaForwardSegment>& segments, const Batch& b,
                        std::vector<CudaProposals>* proposals) const;
  absl::StatusOr<CudaForwardTimings> PhaseTimings(const Batch& b, double host_experts_ms) const;

  absl::Status Ffn(const CudaFfn& ffn, const float* x, int64_t rows, float* y, bool accumulate);
  // y = x W^T for F32 activations x [rows, w.cols] (rounded into x16_ when W is 16-bit).
  MatMulArgs TimesWeight(const float* x, int64_t rows, const CudaMatrix& w, float* y) const;
  // The host expert hook of MoE layer `l` (options_.host_experts): fills slot_out_ from the
  // routed rows in h_ and the routing in slot_experts_ / slot_weights_.
  absl::Status HostExperts(int64_t l, int64_t rows, double* host_ms);

  const CudaWeights& weights_;
  CudaKvPool* kv_pool_;
  CudaModelOptions options_;
  DeviceContext ctx_;

  // Scratch (sizes for options_.max_rows rows).
  DeviceBuffer x_, h_, x16_, qkv_, attn_, gate_, up_, act16_, router_logits_, slot_experts_,
      slot_weights_, expert_counts_, expert_offsets_, sorted_slots_, expert_act_, slot_out_,
      shared_out_, head_x_, logits_, ids_, confidence_, inv_freq_, meta_;
  PinnedBuffer meta_host_, result_host_;
  // Host expert hook staging (pinned): hidden rows, slot experts, slot weights, slot outputs.
  PinnedBuffer hook_hidden_, hook_experts_, hook_weights_, hook_slot_out_;
  cudaEvent_t hook_copied_ = nullptr;  // the routed rows and routing reached the host
  std::vector<cudaEvent_t> events_;
};

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_CUDA_MODEL_H_
