#include "router/generation_proxy.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/auth/authorize.h"
#include "common/grpc_status.h"
#include "common/internal_credentials.h"
#include "common/status_macros.h"
#include "router/stream_relay.h"

namespace dmoe::router {
namespace {

absl::StatusCode CodeOf(const grpc::Status& status) {
  return static_cast<absl::StatusCode>(status.error_code());
}

// The caller's client key: the dmoe-client-key metadata, else GenerateRequest.client_key.
template <typename Request>
std::string ClientKey(const grpc::CallbackServerContext* context, const Request& request) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kClientKeyMetadata);
  if (it != metadata.end()) return std::string(it->second.data(), it->second.size());
  if constexpr (requires { request.client_key(); }) return request.client_key();
  return "";
}

// The caller's authorization metadata goes on to the backend, so a scheduler with its own
// --api-keys sees the same key.
void ForwardAuthorization(const grpc::CallbackServerContext& from, grpc::ClientContext& to) {
  const std::string authorization = CallerAuthorization(from);
  if (!authorization.empty()) to.AddMetadata(auth::kAuthorizationMetadata, authorization);
}

// The request as the backend gets it: the router has resolved model.version to a backend,
// whose own version label may differ (or be empty), so the field is not passed on.
template <typename Request>
std::shared_ptr<const Request> ForBackend(const Request* request) {
  if (request->model().version().empty()) {
    return std::shared_ptr<const Request>(request, [](const Request*) {});  // not owned
  }
  auto copy = std::make_shared<Request>(*request);
  copy->mutable_model()->clear_version();
  return copy;
}

}  // namespace

absl::Status GenerationProxyOptions::Validate() const {
  if (backends.empty()) return absl::InvalidArgumentError("backends: at least one is needed");
  for (const VersionBackend& b : backends) {
    if (b.address.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("backends: version '", b.version, "' has no address"));
    }
  }
  if (list_models_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("list_models_timeout must be > 0");
  }
  if (reattach.timeout < absl::ZeroDuration() || reattach.initial_backoff <= absl::ZeroDuration() ||
      reattach.max_backoff < reattach.initial_backoff) {
    return absl::InvalidArgumentError(
        "reattach: timeout must be >= 0, initial_backoff > 0 and max_backoff >= initial_backoff");
  }
  return absl::OkStatus();  // versions, split and stable: TrafficSplitOptions::Validate
}

absl::StatusOr<std::unique_ptr<GenerationProxy>> GenerationProxy::Create(
    const GenerationProxyOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  TrafficSplitOptions split_options{.versions = {},
                                    .weights = options.split,
                                    .stable = options.stable,
                                    .rollback = options.rollback,
                                    .clock = options.clock};
  for (const VersionBackend& b : options.backends) split_options.versions.push_back(b.version);
  auto proxy = std::unique_ptr<GenerationProxy>(new GenerationProxy());
  DMOE_ASSIGN_OR_RETURN(proxy->split_, TrafficSplit::Create(split_options));
  proxy->options_ = options;
  std::map<std::string, std::string> addresses;
  // gRPC's own reconnect backoff (1 s growing to 120 s) would keep a restarted scheduler
  // unreachable long after it is back; the re-attach tries set the pace instead.
  grpc::ChannelArguments channel_args;
  const int max_backoff_ms = static_cast<int>(std::clamp<int64_t>(
      absl::ToInt64Milliseconds(options.reattach.max_backoff), 100, 60'000));
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  for (const VersionBackend& b : options.backends) {
    addresses[b.version] = b.address;
    proxy->backends_[b.version] = Backend{
        .address = b.address,
        .stub = dmoe::v1::Generation::NewStub(
            CreateChannelAs(b.address,
                            options.backend_credentials ? options.backend_credentials
                                                        : grpc::InsecureChannelCredentials(),
                            options.backend_server_name, channel_args))};
  }
  if (options.registry) {
    proxy->metrics_ = std::make_unique<RouterMetrics>(*options.registry, split_options.versions);
    proxy->metrics_->PublishSplit(proxy->split_->Snapshot());
  }
  proxy->admin_ = std::make_unique<RouterAdminService>(*proxy->split_, proxy->metrics_.get(),
                                                       std::move(addresses), options.api_keys);
  return proxy;
}

void GenerationProxy::OnCallDone(const std::string& version, absl::Time start,
                                 const grpc::Status& status) {
  const absl::Duration duration = absl::Now() - start;
  if (metrics_) metrics_->RecordCall(version, CodeOf(status), duration);
  std::optional<RollbackEvent> rollback = split_->Record(version, CodeOf(status), duration);
  if (rollback && metrics_) {
    metrics_->RecordRollback(rollback->version);
    metrics_->PublishSplit(split_->Snapshot());
  }
}

template <typename Request, typename Response, typename AsyncCall>
grpc::ServerUnaryReactor* GenerationProxy::ForwardUnary(grpc::CallbackServerContext* context,
                                                        const Request* request,
                                                        Response* response,
                                                        auth::CallKind kind, AsyncCall&& call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<auth::Admission> admitted =
      auth::Authorize(*context, options_.api_keys, auth::Role::kUser, kind);
  if (!admitted.ok()) {
    reactor->Finish(ToGrpcStatus(admitted.status()));
    return reactor;
  }
  // Shared: the completion callback must be copyable. Released when the backend answers.
  auto admission = std::make_shared<auth::Admission>(*std::move(admitted));
  absl::StatusOr<std::string> version =
      split_->Pick(ClientKey(context, *request), request->model().version());
  if (!version.ok()) {
    reactor->Finish(ToGrpcStatus(version.status()));
    return reactor;
  }
  auto client = std::make_shared<grpc::ClientContext>();
  client->set_deadline(context->deadline());
  ForwardAuthorization(*context, *client);
  std::shared_ptr<const Request> forwarded = ForBackend(request);
  const absl::Time start = absl::Now();
  call(backends_.at(*version).stub.get(), client.get(), forwarded.get(), response,
       [this, reactor, client, forwarded, response, version = *version, start,
        admission](grpc::Status status) {
         if constexpr (requires { response->mutable_model(); }) {
           if (status.ok()) response->mutable_model()->set_version(version);
           admission->AddTokens(response->stats().prompt_tokens() +
                                response->stats().generated_tokens());
         } else {
           (void)response;  // TokenizeResponse names no model
         }
         // Before Finish: a caller that starts its next call once this one returns must find
         // the stream slot free.
         *admission = auth::Admission();
         OnCallDone(version, start, status);
         reactor->Finish(status);
       });
  return reactor;
}

grpc::ServerUnaryReactor* GenerationProxy::Generate(grpc::CallbackServerContext* context,
                                                    const dmoe::v1::GenerateRequest* request,
                                                    dmoe::v1::GenerateResponse* response) {
  return ForwardUnary(context, request, response, auth::CallKind::kGeneration,
                      [](auto* stub, auto... args) { stub->async()->Generate(args...); });
}

grpc::ServerUnaryReactor* GenerationProxy::Tokenize(grpc::CallbackServerContext* context,
                                                    const dmoe::v1::TokenizeRequest* request,
                                                    dmoe::v1::TokenizeResponse* response) {
  return ForwardUnary(context, request, response, auth::CallKind::kOther,
                      [](auto* stub, auto... args) { stub->async()->Tokenize(args...); });
}

grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerationProxy::GenerateStream(
    grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) {
  class Refusal final : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
   public:
    explicit Refusal(const grpc::Status& status) { Finish(status); }
    void OnDone() override { delete this; }
  };
  absl::StatusOr<auth::Admission> admitted = auth::Authorize(
      *context, options_.api_keys, auth::Role::kUser, auth::CallKind::kGeneration);
  if (!admitted.ok()) return new Refusal(ToGrpcStatus(admitted.status()));
  absl::StatusOr<std::string> version =
      split_->Pick(ClientKey(context, *request), request->model().version());
  if (!version.ok()) return new Refusal(ToGrpcStatus(version.status()));
  const absl::Time start = absl::Now();
  dmoe::v1::GenerateRequest forwarded = *request;
  forwarded.mutable_model()->clear_version();
  return StartStreamRelay(
      context, std::move(forwarded),
      {.stub = backends_.at(*version).stub.get(),
       .version = *version,
       .reattach = options_.reattach,
       .done = [this, version = *version,
                start](const grpc::Status& s) { OnCallDone(version, start, s); },
       .on_reattach = [this, version = *version] {
         if (metrics_) metrics_->RecordReattach(version);
       }},
      *std::move(admitted));
}

grpc::ServerUnaryReactor* GenerationProxy::ListModels(grpc::CallbackServerContext* context,
                                                      const dmoe::v1::ListModelsRequest* request,
                                                      dmoe::v1::ListModelsResponse* response) {
  // One call per backend; the last to answer merges and finishes.
  struct Fanout {
    explicit Fanout(size_t n)
        : contexts(std::make_unique<grpc::ClientContext[]>(n)),
          responses(n),
          pending(n),
          statuses(n) {}
    std::vector<std::string> versions;
    std::unique_ptr<grpc::ClientContext[]> contexts;  // not movable: no vector
    std::vector<dmoe::v1::ListModelsResponse> responses;
    absl::Mutex mu;
    size_t pending ABSL_GUARDED_BY(mu);
    std::vector<grpc::Status> statuses ABSL_GUARDED_BY(mu);
  };
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status admitted = auth::Authorize(*context, options_.api_keys, auth::Role::kUser,
                                              auth::CallKind::kOther)
                                  .status();
      !admitted.ok()) {
    reactor->Finish(ToGrpcStatus(admitted));
    return reactor;
  }
  const size_t n = backends_.size();
  auto fanout = std::make_shared<Fanout>(n);
  const auto bound = std::chrono::system_clock::now() +
                     absl::ToChronoMilliseconds(options_.list_models_timeout);
  const auto deadline = std::min(context->deadline(), bound);
  for (const VersionBackend& b : options_.backends) fanout->versions.push_back(b.version);
  for (size_t i = 0; i < n; ++i) {
    fanout->contexts[i].set_deadline(deadline);
    ForwardAuthorization(*context, fanout->contexts[i]);
    backends_.at(fanout->versions[i])
        .stub->async()
        ->ListModels(&fanout->contexts[i], request, &fanout->responses[i],
                     [this, fanout, i, reactor, response](grpc::Status status) {
                       std::vector<grpc::Status> statuses;
                       {
                         absl::MutexLock lock(&fanout->mu);
                         fanout->statuses[i] = status;
                         if (--fanout->pending > 0) return;
                         statuses = std::move(fanout->statuses);  // the last answer
                       }
                       const SplitSnapshot split = split_->Snapshot();
                       grpc::Status first_error;
                       bool any_ok = false;
                       for (size_t j = 0; j < fanout->versions.size(); ++j) {
                         if (!statuses[j].ok()) {
                           if (first_error.ok()) first_error = statuses[j];
                           continue;
                         }
                         any_ok = true;
                         for (const dmoe::v1::ModelInfo& m : fanout->responses[j].models()) {
                           dmoe::v1::ModelInfo* info = response->add_models();
                           *info = m;
                           info->set_version(fanout->versions[j]);
                           info->set_traffic_percent(split.versions[j].percent);
                           info->set_stable(split.versions[j].stable);
                         }
                       }
                       reactor->Finish(any_ok ? grpc::Status::OK : first_error);
                     });
  }
  return reactor;
}

}  // namespace dmoe::router
