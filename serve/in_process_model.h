// A whole model inside this process, as a Scheduler's StepExecutor: the mapped checkpoint, its
// weights, and either (device "cpu") an attention engine (KV cache, compute backend) whose
// experts run in-process (model::LocalExpertExecutor), or (device "cuda") the whole forward on
// one GPU (CreateCudaStepExecutor: weights uploaded, KV on the device).
// The embedded deployment (`dmoe serve`), `dmoe generate --device cuda` and the tests use it;
// the cluster uses RemoteAttentionExecutor instead.
#ifndef DMOE_SERVE_IN_PROCESS_MODEL_H_
#define DMOE_SERVE_IN_PROCESS_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/logging.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "attention_service/attention_engine.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/weights.h"
#include "serve/local_step_executor.h"

namespace dmoe::serve {

struct InProcessModelOptions {
  std::string model_dir;          // Hugging Face layout: config.json + safetensors
  std::string kernels = "cpu";    // "cpu" (fast backend) or "reference" (naive oracle)
  int num_threads = 0;            // compute threads; <= 0: all hardware threads
  int64_t kv_page_tokens = 32;    // tokens per KV page (the diffusion block length)
  int64_t kv_max_pages = 8192;    // KV capacity in pages; bounds admission
  // Where the forward runs: "cpu" (kernels / num_threads apply) or "cuda" (GPU `cuda_device`;
  // the KV pool of kv_max_pages pages is allocated on the device up front).
  std::string device = "cpu";
  int cuda_device = 0;

  // INVALID_ARGUMENT naming the field (empty model_dir, non-positive KV geometry, a device
  // other than "cpu" / "cuda").
  absl::Status Validate() const;
};

// Thread-safe (the attention engine serialises steps). References live as long as this object.
class InProcessModel {
 public:
  // Opens and loads the checkpoint. NOT_FOUND / INVALID_ARGUMENT from the checkpoint loader,
  // INVALID_ARGUMENT for bad options. Device "cuda": FAILED_PRECONDITION when the binary was
  // built without CUDA or no GPU is usable (the message names --device), RESOURCE_EXHAUSTED
  // when the weights and KV pool do not fit on the GPU.
  static absl::StatusOr<std::unique_ptr<InProcessModel>> Create(
      const InProcessModelOptions& options);

  const model::ModelConfig& config() const { return checkpoint_->config(); }
  const model::Model& model() const { return *model_; }
  scheduler::StepExecutor& step_executor() { return *executor_; }
  const std::string& device() const { return device_; }
  // Device "cpu" only (the CUDA executor's pool lives on the GPU).
  const model::KvCachePool& kv_pool() const {
    DMOE_CHECK(attention_ != nullptr) << "kv_pool() of an InProcessModel on device " << device_;
    return attention_->kv_pool();
  }

 private:
  InProcessModel() = default;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights weights_;
  std::unique_ptr<model::Model> model_;
  std::string device_;
  std::unique_ptr<attention::AttentionEngine> attention_;  // device "cpu"
  std::unique_ptr<scheduler::StepExecutor> executor_;
};

}  // namespace dmoe::serve

#endif  // DMOE_SERVE_IN_PROCESS_MODEL_H_
