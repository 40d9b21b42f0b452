#include "scheduler/generation_endpoint.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "metrics/catalog.h"

namespace dmoe::scheduler {
namespace {

std::string DirName(const std::string& dir) {
  std::filesystem::path p(dir);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "a/b/" -> "a/b"
  std::string name = p.filename().string();
  return name.empty() ? "model" : name;
}

// The decoding ids of the served model: the tokenizer's (overridden by the options), or the
// options' alone without a tokenizer.json.
absl::Status ResolveDecodingIds(const GenerationEndpointOptions& options,
                                const model::ModelConfig& config,
                                const model::Tokenizer* tokenizer,
                                GenerationServerOptions& service_options) {
  if (tokenizer != nullptr) {
    absl::StatusOr<model::DecodeTokenIds> ids =
        model::ResolveDecodeTokenIds(*tokenizer, options.mask_id, options.stop_ids);
    if (ids.ok()) {
      service_options.mask_id = ids->mask_id;
      service_options.stop_ids = ids->stop_ids;
      return absl::OkStatus();
    }
    if (config.kind != model::ModelKind::kAutoregressive) return ids.status();
    // An autoregressive model needs no mask token.
    DMOE_LOG(WARNING) << "decode token ids: " << ids.status();
    service_options.stop_ids = options.stop_ids.value_or(std::vector<int32_t>{});
    return absl::OkStatus();
  }
  service_options.mask_id = options.mask_id.value_or(-1);
  service_options.stop_ids = options.stop_ids.value_or(std::vector<int32_t>{});
  if (config.kind == model::ModelKind::kBlockDiffusion && service_options.mask_id < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        options.model_dir,
        " has no tokenizer.json: give the mask token id (--mask-id) and the stop ids "
        "(--stop-ids)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GenerationEndpointOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("model_dir is empty");
  if (listen.empty() || listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen must be host:port, got '", listen, "'"));
  }
  if (!journal.path.empty()) DMOE_RETURN_IF_ERROR(journal.Validate());
  return scheduler.Validate();
}

absl::StatusOr<std::unique_ptr<GenerationEndpoint>> GenerationEndpoint::Start(
    const GenerationEndpointOptions& options, const metrics::ProcessMetrics& metrics,
    const model::ModelConfig& config, StepExecutor& executor,
    const std::vector<grpc::Service*>& extra_services) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto e = std::unique_ptr<GenerationEndpoint>(new GenerationEndpoint());
  GenerationServerOptions service_options{
      .model_name = options.model_name.empty() ? DirName(options.model_dir) : options.model_name,
      .model_version = options.model_version};
  if (std::filesystem::exists(std::filesystem::path(options.model_dir) / "tokenizer.json")) {
    DMOE_ASSIGN_OR_RETURN(e->tokenizer_, model::Tokenizer::Load(options.model_dir));
  }
  DMOE_RETURN_IF_ERROR(ResolveDecodingIds(options, config, e->tokenizer_.get(), service_options));
  if (!options.api_keys_file.empty()) {
    auth::ApiKeysOptions keys_options;
    keys_options.path = options.api_keys_file;
    if (metrics.registry) {
      keys_options.refusals = &dmoe::metrics::CounterFamily(
          *metrics.registry, "dmoe_api_refusals_total", metrics.model_version);
    }
    DMOE_ASSIGN_OR_RETURN(e->api_keys_, auth::ApiKeys::Load(keys_options));
    service_options.api_keys = e->api_keys_.get();
  } else {
    DMOE_LOG(INFO) << "API keys off: the Generation API takes unauthenticated calls "
                      "(--api-keys FILE turns them on)";
  }
  e->model_name_ = service_options.model_name;

  SchedulerOptions scheduler_options = options.scheduler;
  scheduler_options.start_step_thread = true;
  scheduler_options.kv_page_tokens = options.kv_page_tokens;
  if (metrics.registry) {
    e->scheduler_metrics_ = std::make_unique<SchedulerMetrics>(metrics);
    scheduler_options.metrics = e->scheduler_metrics_.get();
  }
  if (!options.journal.path.empty()) {
    RequestJournalOptions journal_options = options.journal;
    if (e->scheduler_metrics_) e->scheduler_metrics_->ObserveJournal(journal_options);
    DMOE_ASSIGN_OR_RETURN(e->journal_, RequestJournal::Open(journal_options));
    scheduler_options.journal = e->journal_.get();
    DMOE_LOG(INFO) << "journal " << options.journal.path << ": fsync "
                   << JournalFsyncName(options.journal.fsync)
                   << (options.journal.fsync == JournalFsync::kInterval
                           ? absl::StrCat(" every ", absl::FormatDuration(options.journal.fsync_interval))
                           : std::string())
                   << ", " << e->journal_->recovered().size() << " unfinished request(s) in it";
  }
  DMOE_ASSIGN_OR_RETURN(e->scheduler_, Scheduler::Create(scheduler_options, config, executor));
  DMOE_ASSIGN_OR_RETURN(e->service_, GenerationServer::Create(service_options, *e->scheduler_,
                                                              config, e->tokenizer_.get()));

  cluster::GrpcServerOptions server_options{
      .listen = options.listen,
      .services = {e->service_.get()},
      .health_services = {dmoe::v1::Generation::service_full_name()},
      .metrics = metrics};
  for (grpc::Service* service : extra_services) server_options.services.push_back(service);
  DMOE_ASSIGN_OR_RETURN(server_options.credentials,
                        auth::ServerCredentials(options.tls,
                                                extra_services.empty()
                                                    ? auth::ClientCertificates::kNotRequested
                                                    : auth::ClientCertificates::kRequired));
  if (options.tls.enabled()) {
    DMOE_LOG(INFO) << "TLS on the gRPC port"
                   << (extra_services.empty() ? "" : ", client certificates required");
  }
  DMOE_ASSIGN_OR_RETURN(e->server_, cluster::StartGrpcServer(server_options));
  DMOE_LOG(INFO) << "serving model '" << e->model_name_ << "' (" << config.model_type << ") on "
                 << e->address() << ": kv_pages " << options.kv_pages << " x "
                 << options.kv_page_tokens << " tokens, max_batch_tokens "
                 << scheduler_options.max_batch_tokens << ", max_queue "
                 << scheduler_options.max_queue << ", mask_id " << service_options.mask_id
                 << ", tokenizer " << (e->tokenizer_ ? "yes" : "no");
  if (!options.http_listen.empty()) {
    DMOE_ASSIGN_OR_RETURN(e->http_, http::OpenAiServer::Start({.listen = options.http_listen},
                                                              e->InProcessChannel()));
    DMOE_LOG(INFO) << "OpenAI-compatible HTTP API at http://" << e->http_address();
  }
  return e;
}

std::shared_ptr<grpc::Channel> GenerationEndpoint::InProcessChannel() { return server_.InProcessChannel(); }

GenerationEndpoint::~GenerationEndpoint() { Drain(absl::ZeroDuration()); }

void GenerationEndpoint::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&drain_mu_);
  if (drained_) return;
  drained_ = true;
  // Every service NOT_SERVING, and no later change (what a readiness probe watches).
  server_.MarkNotServing();
  if (service_) service_->StartDrain();
  if (scheduler_) {
    scheduler_->StartDrain();
    if (!scheduler_->WaitUntilIdle(timeout)) {
      const SchedulerStats stats = scheduler_->Stats();
      if (stats.running + stats.waiting > 0) {
        DMOE_LOG(WARNING) << "drain: " << stats.running << " running and " << stats.waiting
                          << " queued requests after " << timeout << " end with UNAVAILABLE";
      }
    }
    scheduler_->Stop();  // finishes every remaining call's reactor
  }
  // After the scheduler: its HTTP calls have ended with their gRPC calls, so the HTTP
  // workers can be joined.
  http_.reset();
  if (server_.server) {
    server_.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
}

}  // namespace dmoe::scheduler
