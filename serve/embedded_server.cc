#include "serve/embedded_server.h"

#include "absl/strings/str_cat.h"
#include "common/gpu_index.h"
#include "common/status_macros.h"

namespace dmoe::serve {

absl::Status EmbeddedServerOptions::Validate() const {
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be 'cpu' or 'cuda', got '", device, "'"));
  }
  DMOE_RETURN_IF_ERROR(ValidateGpuFlag(cuda_device));
  return api.Validate();
}

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(
    const EmbeddedServerOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto s = std::unique_ptr<EmbeddedServer>(new EmbeddedServer());
  DMOE_ASSIGN_OR_RETURN(s->metrics_,
                        metrics::ServeProcessMetrics("serve", options.api.model_version,
                                                     options.api.metrics_listen,
                                                     options.api.metrics));
  DMOE_ASSIGN_OR_RETURN(s->model_, InProcessModel::Create({.model_dir = options.api.model_dir,
                                                           .kernels = options.kernels,
                                                           .num_threads = options.num_threads,
                                                           .kv_page_tokens =
                                                               options.api.kv_page_tokens,
                                                           .kv_max_pages = options.api.kv_pages,
                                                           .device = options.device,
                                                           .cuda_device = options.cuda_device}));
  DMOE_ASSIGN_OR_RETURN(s->api_,
                        scheduler::GenerationEndpoint::Start(options.api, s->metrics_.metrics,
                                                             s->model_->config(),
                                                             s->model_->step_executor()));
  return s;
}

}  // namespace dmoe::serve
