// The single-process engine: a checkpoint, a compute backend, a KV cache pool and the
// step loop that batches every running sequence's next forward into one model call.
#ifndef DMOE_ENGINE_ENGINE_H_
#define DMOE_ENGINE_ENGINE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sampling.h"
#include "engine/sequence.h"
#include "model/checkpoint.h"
#include "model/expert_executor.h"
#include "model/kernels.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/weights.h"

namespace dmoe::engine {

// Runs one batched forward for `plans` (each with the KV cache of its sequence) and samples
// each plan's output rows. The core of both the Engine and the attention service.
absl::StatusOr<std::vector<Proposal>> ExecutePlans(const model::Model& model,
                                                   model::Kernels& kernels,
                                                   model::ExpertExecutor& experts,
                                                   const std::vector<StepPlan>& plans,
                                                   const std::vector<model::KvSequence*>& caches,
                                                   model::ForwardStats* stats = nullptr);

struct EngineOptions {
  std::string model_dir;
  std::string kernels = "cpu";     // "cpu" (fast backend) or "reference" (naive oracle)
  int num_threads = 0;             // <= 0: all hardware threads
  int64_t kv_page_tokens = 32;
  int64_t kv_max_pages = 8192;     // KV capacity in pages
  int64_t max_batch_sequences = 64;  // sequences per forward
};

struct GenerationResult {
  std::vector<int32_t> ids;        // generated ids, truncated after the first stop token
  std::vector<float> logprobs;     // per id: its log-probability when committed
  FinishReason finish_reason = FinishReason::kNone;
  int64_t forwards = 0;
  int64_t edits = 0;               // token editing: T2T rewrites (re-masks included)
  int64_t remasks = 0;             // of which back to the mask id
  double seconds = 0;              // wall time from start of Generate to this request's end
  double first_block_seconds = 0;  // time to the first final token(s)
  double tokens_per_forward() const {
    return forwards ? static_cast<double>(ids.size()) / static_cast<double>(forwards) : 0.0;
  }
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  GenerationParams params;
};

// Called after every applied step of request `index` (e.g. to redraw a block or stream tokens).
using StepObserver = std::function<void(size_t index, Sequence& sequence)>;

// Thread-compatible: one Generate at a time.
class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);

  const model::ModelConfig& config() const { return checkpoint_->config(); }
  const model::Checkpoint& checkpoint() const { return *checkpoint_; }
  const model::Model& model() const { return *model_; }
  model::Kernels& kernels() { return *kernels_; }
  model::KvCachePool& kv_pool() { return *kv_pool_; }

  // Runs every request to completion, batching all live sequences into each forward.
  // Errors: INVALID_ARGUMENT for bad prompts/params (naming the request index).
  absl::StatusOr<std::vector<GenerationResult>> Generate(
      const std::vector<GenerationRequest>& requests, const StepObserver& observer = nullptr);

 private:
  Engine() = default;
  EngineOptions options_;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights weights_;
  std::unique_ptr<model::Model> model_;
  model::KernelsPtr kernels_;
  std::unique_ptr<model::LocalExpertExecutor> experts_;
  std::unique_ptr<model::KvCachePool> kv_pool_;
};

}  // namespace dmoe::engine

#endif  // DMOE_ENGINE_ENGINE_H_
