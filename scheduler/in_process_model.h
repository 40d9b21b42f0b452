// A whole model inside this process, as a Scheduler's StepExecutor: the mapped checkpoint, its
// weights, and an attention engine (KV cache, compute backend) whose experts run in-process
// (model::LocalExpertExecutor). The embedded deployment (`dmoe serve`) and the tests use it;
// the cluster uses RemoteAttentionExecutor instead.
#ifndef DMOE_SCHEDULER_IN_PROCESS_MODEL_H_
#define DMOE_SCHEDULER_IN_PROCESS_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "attention_service/attention_engine.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/weights.h"
#include "scheduler/local_step_executor.h"

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

// Thread-safe (the attention engine serialises steps). References live as long as this object.
class InProcessModel {
 public:
  // Opens and loads the checkpoint. NOT_FOUND / INVALID_ARGUMENT from the checkpoint loader,
  // INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<InProcessModel>> Create(
      const InProcessModelOptions& options);

  const model::ModelConfig& config() const { return checkpoint_->config(); }
  const model::Model& model() const { return *model_; }
  StepExecutor& step_executor() { return *executor_; }
  const model::KvCachePool& kv_pool() const { return attention_->kv_pool(); }

 private:
  InProcessModel() = default;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights weights_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<attention::AttentionEngine> attention_;
  std::unique_ptr<LocalStepExecutor> executor_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_IN_PROCESS_MODEL_H_
