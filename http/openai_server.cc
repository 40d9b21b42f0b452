#include "http/openai_server.h"

#include <httplib.h>

#include <ctime>
#include <deque>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/generic/generic_stub.h"
#include "clients/cpp/generation_client.h"
#include "common/auth/authorize.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "http/openai_protocol.h"

namespace dmoe::http {
namespace {

using Json = nlohmann::json;

void SendError(httplib::Response& res, const absl::Status& status) {
  res.status = HttpStatusFor(status.code());
  res.set_content(ErrorJson(status).dump(), "application/json");
}

// One GenerateStream call on its own thread, its events handed over through a queue: the HTTP
// handler can wait for the first event (to answer an invalid request with a plain error) and
// then stream the rest, and cancel the call when the HTTP client goes away.
class StreamingCall {
 public:
  StreamingCall(client::GenerationClient& client, dmoe::v1::GenerateRequest request,
                client::CallOptions options)
      : thread_([this, &client, request = std::move(request), options = std::move(options)] {
          absl::StatusOr<dmoe::v1::FinalEvent> final_event = client.GenerateStream(
              request,
              [this](const dmoe::v1::GenerateStreamResponse& event) {
                absl::MutexLock lock(&mu_);
                events_.push_back(event);
                return !cancelled_;
              },
              options);
          absl::MutexLock lock(&mu_);
          end_ = final_event.status();
        }) {}
  ~StreamingCall() {
    Cancel();
    thread_.join();
  }

  // The next event; nullopt at the end (then status() says how it ended).
  std::optional<dmoe::v1::GenerateStreamResponse> Next() {
    absl::MutexLock lock(&mu_, absl::Condition(this, &StreamingCall::Ready));
    if (events_.empty()) return std::nullopt;
    dmoe::v1::GenerateStreamResponse event = std::move(events_.front());
    events_.pop_front();
    return event;
  }
  absl::Status status() {
    absl::MutexLock lock(&mu_);
    return end_.value_or(absl::OkStatus());
  }
  // The server stops the request at its next event and frees its KV.
  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }

 private:
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !events_.empty() || end_.has_value();
  }

  absl::Mutex mu_;
  std::deque<dmoe::v1::GenerateStreamResponse> events_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> end_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

// Turns the events of one call into OpenAI's text and logprobs. The server has applied the
// stop strings already (its block text never shows what a later block turns into a match).
struct Transcript {
  explicit Transcript(const OpenAiCall& call) : call(call) {}
  const OpenAiCall& call;
  std::string request_id;
  int64_t text_offset = 0;  // bytes of token text so far (completions' text_offset)
  google::protobuf::RepeatedPtrField<dmoe::v1::TokenLogprob> all_logprobs;
  Json last_logprobs;  // the last event's, for its chunk

  // Text of one event that may be shown now ("" for canvas events).
  std::string Take(const dmoe::v1::GenerateStreamResponse& event) {
    if (!event.request_id().empty()) request_id = event.request_id();
    last_logprobs = nullptr;
    if (event.has_block()) {
      last_logprobs = LogprobsJson(call, event.block().logprobs(), text_offset);
      for (const dmoe::v1::TokenLogprob& t : event.block().logprobs()) {
        text_offset += static_cast<int64_t>(t.token().size());
      }
      all_logprobs.MergeFrom(event.block().logprobs());
      return event.block().text();
    }
    if (event.has_final()) return event.final().text();
    return "";
  }
  Json logprobs() const { return LogprobsJson(call, all_logprobs, 0); }
};

// The HTTP caller's "Authorization: Bearer KEY", passed on to the gRPC call it makes (the gRPC
// server checks it; docs/security.md).
client::CallOptions CallerOptions(const httplib::Request& req) {
  client::CallOptions options;
  if (std::optional<std::string> key = auth::ParseBearer(req.get_header_value("Authorization"))) {
    options.api_key = *std::move(key);
  }
  return options;
}

// grpc.health.v1.Health/Check of the Generation service through a generic stub (Debian ships
// no C++ health stubs): HealthCheckRequest{service = 1}, HealthCheckResponse{status = 1};
// SERVING is 1. What /health asks when API keys keep ListModels from answering it.
absl::Status GrpcHealth(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  const std::string service = dmoe::v1::Generation::service_full_name();
  std::string bytes = {0x0a, static_cast<char>(service.size())};  // < 128
  bytes += service;
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("unreadable health response");
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (out.size() == 2 && out[0] == 0x08 && out[1] == 1) return absl::OkStatus();
  return absl::UnavailableError("the Generation service is not serving");
}

class Handlers {
 public:
  explicit Handlers(std::shared_ptr<grpc::Channel> channel)
      : channel_(channel), client_(client::GenerationClient::FromChannel(std::move(channel))) {}

  // Unauthenticated, like grpc.health.v1: with API keys on (ListModels refused without one)
  // it asks the gRPC health service instead.
  void Health(const httplib::Request& req, httplib::Response& res) {
    client::CallOptions call = CallerOptions(req);
    call.timeout = absl::Seconds(5);
    absl::StatusOr<dmoe::v1::ListModelsResponse> models = client_->ListModels(call);
    if (absl::IsUnauthenticated(models.status()) || absl::IsPermissionDenied(models.status())) {
      if (absl::Status health = GrpcHealth(channel_); !health.ok()) return SendError(res, health);
      res.set_content(R"({"status":"ok"})", "application/json");
      return;
    }
    if (!models.ok() || models->models().empty()) {
      SendError(res, models.ok() ? absl::UnavailableError("no model is served") : models.status());
      return;
    }
    res.set_content(R"({"status":"ok"})", "application/json");
  }

  void Models(const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<dmoe::v1::ListModelsResponse> models = client_->ListModels(CallerOptions(req));
    if (!models.ok()) return SendError(res, models.status());
    Json data = Json::array();
    for (const dmoe::v1::ModelInfo& m : models->models()) {
      data.push_back({{"id", m.name()},
                      {"object", "model"},
                      {"created", 0},
                      {"owned_by", "dmoe"},
                      {"version", m.version()},
                      {"max_model_len", m.max_position_embeddings()},
                      {"block_length", m.block_length()}});
    }
    res.set_content(Json{{"object", "list"}, {"data", data}}.dump(), "application/json");
  }

  void Generate(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    absl::StatusOr<OpenAiCall> parsed = ParseOpenAiRequest(req.body, endpoint);
    if (!parsed.ok()) return SendError(res, parsed.status());
    auto call = std::make_shared<OpenAiCall>(*std::move(parsed));
    // The served model: its name for the response, its stop ids for stop_token_ids.
    absl::StatusOr<dmoe::v1::ListModelsResponse> models = client_->ListModels(CallerOptions(req));
    if (!models.ok()) return SendError(res, models.status());
    if (models->models().empty()) return SendError(res, absl::UnavailableError("no model"));
    const dmoe::v1::ModelInfo& served = models->models(0);
    const std::string model = call->model.empty() ? served.name() : call->model;
    if (!call->stop_token_ids.empty()) {
      auto* ids = call->request.mutable_params()->mutable_stop_ids()->mutable_ids();
      ids->Add(served.stop_ids().begin(), served.stop_ids().end());
      ids->Add(call->stop_token_ids.begin(), call->stop_token_ids.end());
    }
    const int64_t created = static_cast<int64_t>(std::time(nullptr));

    auto stream = std::make_shared<StreamingCall>(*client_, call->request, CallerOptions(req));
    auto transcript = std::make_shared<Transcript>(*call);
    std::optional<dmoe::v1::GenerateStreamResponse> first = stream->Next();
    if (!first) return SendError(res, stream->status());  // refused before any event

    if (!call->stream) {
      std::string text = transcript->Take(*first);
      std::optional<dmoe::v1::FinalEvent> final_event;
      if (first->has_final()) final_event = first->final();
      for (auto e = stream->Next(); e; e = stream->Next()) {
        text += transcript->Take(*e);
        if (e->has_final()) final_event = e->final();
      }
      if (!final_event) return SendError(res, stream->status());
      const std::string prefix = endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-";
      res.set_content(CompletionJson(*call, prefix + transcript->request_id, created, model, text,
                                     FinishReasonName(final_event->stats().finish_reason()),
                                     final_event->stats(), transcript->logprobs())
                          .dump(),
                      "application/json");
      return;
    }

    // Server-sent events: one chunk per committed block, the finish reason on the last, the
    // usage chunk when asked for, then [DONE].
    auto pending = std::make_shared<std::optional<dmoe::v1::GenerateStreamResponse>>(first);
    auto started = std::make_shared<bool>(false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [call, stream, transcript, pending, started, model, created, endpoint](
            size_t, httplib::DataSink& sink) {
          auto send = [&sink](const Json& chunk) {
            const std::string line = absl::StrCat("data: ", chunk.dump(), "\n\n");
            return sink.write(line.data(), line.size());
          };
          std::optional<dmoe::v1::GenerateStreamResponse> event =
              pending->has_value() ? std::exchange(*pending, std::nullopt) : stream->Next();
          if (!event) {
            // Ended without a final event: the call failed mid-stream.
            send(ErrorJson(stream->status()));
            sink.done();
            return true;
          }
          const std::string text = transcript->Take(*event);  // sets request_id
          const std::string id =
              (endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-") +
              transcript->request_id;
          bool ok = true;
          if (event->has_final()) {
            ok = send(ChunkJson(*call, id, created, model, text,
                                FinishReasonName(event->final().stats().finish_reason()),
                                !*started));
            if (ok && call->include_usage) {
              ok = send(UsageChunkJson(*call, id, created, model, event->final().stats()));
            }
            static constexpr char kDone[] = "data: [DONE]\n\n";
            if (ok) ok = sink.write(kDone, sizeof(kDone) - 1);
            if (ok) sink.done();
          } else if (!text.empty() || !transcript->last_logprobs.is_null() ||
                     (!*started && endpoint == Endpoint::kChatCompletions)) {
            ok = send(ChunkJson(*call, id, created, model, text, "", !*started,
                                transcript->last_logprobs));
            *started = true;
          }
          if (!ok) stream->Cancel();  // the client went away: free the request's KV
          return ok;
        });
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<client::GenerationClient> client_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(
    const OpenAiServerOptions& options, std::shared_ptr<grpc::Channel> channel) {
  const size_t colon = options.listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(options.listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http-listen: expected HOST:PORT, got '", options.listen, "'"));
  }
  const std::string host = options.listen.substr(0, colon);
  std::unique_ptr<OpenAiServer> server(new OpenAiServer());
  server->server_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->server_;
  const size_t threads = static_cast<size_t>(std::max(1, options.threads));
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  auto handlers = std::make_shared<Handlers>(std::move(channel));
  http.Get("/health", [handlers](const httplib::Request& q, httplib::Response& r) {
    handlers->Health(q, r);
  });
  http.Get("/v1/models", [handlers](const httplib::Request& q, httplib::Response& r) {
    handlers->Models(q, r);
  });
  http.Post("/v1/completions", [handlers](const httplib::Request& q, httplib::Response& r) {
    handlers->Generate(q, r, Endpoint::kCompletions);
  });
  http.Post("/v1/chat/completions", [handlers](const httplib::Request& q, httplib::Response& r) {
    handlers->Generate(q, r, Endpoint::kChatCompletions);
  });
  // Unknown paths and methods: OpenAI's error body instead of an empty page.
  http.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    SendError(r, r.status == 404 ? absl::NotFoundError(absl::StrCat("no route for ", q.method,
                                                                     " ", q.path))
                                 : absl::InvalidArgumentError(absl::StrCat(
                                       "cannot serve ", q.method, " ", q.path)));
  });
  if (port == 0) {
    port = http.bind_to_any_port(host);
  } else if (!http.bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat("--http-listen: cannot bind ", options.listen));
  }
  server->port_ = port;
  server->address_ = absl::StrCat(host, ":", port);
  server->thread_ = std::thread([&http] { http.listen_after_bind(); });
  return server;
}

OpenAiServer::~OpenAiServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace dmoe::http
