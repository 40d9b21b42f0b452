// Everything engine::ExecutePlans needs to run a checkpoint inside this process: the mapped
// checkpoint, its weights, the forward pass, a compute backend, model::LocalExpertExecutor and
// a KV cache pool. The embedded deployment (`dmoe serve`) and the tests hand these to a
// Scheduler; the cluster replaces the executor with the sharded one.
#ifndef DMOE_SCHEDULER_IN_PROCESS_MODEL_H_
#define DMOE_SCHEDULER_IN_PROCESS_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/expert_executor.h"
#include "model/kernels.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/weights.h"

namespace dmoe::scheduler {

struct InProcessModelOptions {
  std::string model_dir;          // Hugging Face layout: config.json + safetensors
  std::string kernels = "cpu";    // "cpu" (fast backend) or "reference" (naive oracle)
  int num_threads = 0;            // compute threads; <= 0: all hardware threads
  int64_t kv_page_tokens = 32;    // tokens per KV page (the diffusion block length)
  int64_t kv_max_pages = 8192;    // KV capacity in pages; bounds admission

  // INVALID_ARGUMENT naming the field (empty model_dir, non-positive KV geometry).
  absl::Status Validate() const;
};

// Thread-compatible. The accessors hand out references that live as long as this object;
// kernels() and experts() must be used by one thread at a time (the scheduler's step thread).
class InProcessModel {
 public:
  // Opens and loads the checkpoint. NOT_FOUND / INVALID_ARGUMENT from the checkpoint loader,
  // INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<InProcessModel>> Create(
      const InProcessModelOptions& options);

  const model::ModelConfig& config() const { return checkpoint_->config(); }
  const model::Model& model() const { return *model_; }
  model::Kernels& kernels() { return *kernels_; }
  model::ExpertExecutor& experts() { return *experts_; }
  model::KvCachePool& kv_pool() { return *kv_pool_; }

 private:
  InProcessModel() = default;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights weights_;
  std::unique_ptr<model::Model> model_;
  model::KernelsPtr kernels_;
  std::unique_ptr<model::LocalExpertExecutor> experts_;
  std::unique_ptr<model::KvCachePool> kv_pool_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_IN_PROCESS_MODEL_H_
