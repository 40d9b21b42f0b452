#include "serve/in_process_model.h"

#include "absl/strings/str_cat.h"
#include "common/gpu_index.h"
#include "common/status_macros.h"
#include "serve/cuda_step_executor.h"

namespace dmoe::serve {

absl::Status InProcessModelOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("model_dir is empty");
  if (kv_page_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_page_tokens must be >= 1, got ", kv_page_tokens));
  }
  if (kv_max_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_max_pages must be >= 1, got ", kv_max_pages));
  }
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be 'cpu' or 'cuda', got '", device, "'"));
  }
  return ValidateGpuFlag(cuda_device);
}

absl::StatusOr<std::unique_ptr<InProcessModel>> InProcessModel::Create(
    const InProcessModelOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto m = std::unique_ptr<InProcessModel>(new InProcessModel());
  DMOE_ASSIGN_OR_RETURN(m->checkpoint_, model::Checkpoint::Open(options.model_dir));
  DMOE_ASSIGN_OR_RETURN(m->weights_, model::LoadModelWeights(*m->checkpoint_, {}));
  m->model_ = std::make_unique<model::Model>(m->checkpoint_->config(), m->weights_);
  m->device_ = options.device;
  if (options.device == "cuda") {
    DMOE_ASSIGN_OR_RETURN(m->executor_,
                          CreateCudaStepExecutor(m->checkpoint_->config(), m->weights_,
                                                 {.device = options.cuda_device,
                                                  .kv_page_tokens = options.kv_page_tokens,
                                                  .kv_max_pages = options.kv_max_pages}));
    return m;
  }
  const model::ModelWeights& weights = m->weights_;
  DMOE_ASSIGN_OR_RETURN(
      m->attention_,
      attention::AttentionEngine::Create({.kernels = options.kernels,
                                          .num_threads = options.num_threads,
                                          .kv_page_tokens = options.kv_page_tokens,
                                          .kv_max_pages = options.kv_max_pages,
                                          .micro_batches = 1},
                                         *m->model_, [&weights](model::Kernels& kernels) {
                                           return std::make_unique<model::LocalExpertExecutor>(
                                               weights, kernels);
                                         }));
  m->executor_ = std::make_unique<LocalStepExecutor>(*m->attention_);
  return m;
}

}  // namespace dmoe::serve
