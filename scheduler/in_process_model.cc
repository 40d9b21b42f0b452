#include "scheduler/in_process_model.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/engine.h"

namespace dmoe::scheduler {

absl::Status InProcessModelOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("model_dir is empty");
  if (kv_page_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_page_tokens must be >= 1, got ", kv_page_tokens));
  }
  if (kv_max_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_max_pages must be >= 1, got ", kv_max_pages));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<InProcessModel>> InProcessModel::Create(
    const InProcessModelOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto m = std::unique_ptr<InProcessModel>(new InProcessModel());
  DMOE_ASSIGN_OR_RETURN(m->checkpoint_, model::Checkpoint::Open(options.model_dir));
  DMOE_ASSIGN_OR_RETURN(m->weights_, model::LoadModelWeights(*m->checkpoint_, {}));
  m->model_ = std::make_unique<model::Model>(m->checkpoint_->config(), m->weights_);
  DMOE_ASSIGN_OR_RETURN(m->kernels_, engine::MakeKernels(options.kernels, options.num_threads));
  m->experts_ = std::make_unique<model::LocalExpertExecutor>(m->weights_, *m->kernels_);
  m->kv_pool_ = std::make_unique<model::KvCachePool>(
      m->model_->KvOptions(options.kv_page_tokens, options.kv_max_pages));
  return m;
}

}  // namespace dmoe::scheduler
