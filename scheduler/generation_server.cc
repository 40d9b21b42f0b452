#include "scheduler/generation_server.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <random>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/auth/authorize.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/generation_params.h"
#include "model/stop_strings.h"

namespace dmoe::scheduler {
namespace {

absl::StatusOr<std::vector<int32_t>> EncodeChat(const model::Tokenizer& tokenizer,
                                                const dmoe::v1::ChatMessages& chat) {
  if (chat.messages().empty()) return absl::InvalidArgumentError("prompt: chat has no messages");
  std::vector<model::ChatMessage> messages;
  for (const auto& m : chat.messages()) messages.push_back({m.role(), m.content()});
  absl::StatusOr<std::string> text = model::RenderChat(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt.chat: ", text.status().message()));
  }
  return tokenizer.Encode(*text);
}

absl::Status NoTokenizer(const std::string& model, const char* what) {
  return absl::FailedPreconditionError(absl::StrCat(
      what, ": model '", model, "' is served without a tokenizer; send prompt_ids"));
}

// One TokenLogprob per id of ids/logprobs [from, end) (DecodingParams.logprobs).
void AddLogprobs(const model::Tokenizer* tokenizer, const std::vector<int32_t>& ids,
                 const std::vector<float>& logprobs, size_t from, size_t end,
                 google::protobuf::RepeatedPtrField<dmoe::v1::TokenLogprob>* out) {
  end = std::min({end, ids.size(), logprobs.size()});
  for (size_t i = from; i < end; ++i) {
    dmoe::v1::TokenLogprob* entry = out->Add();
    entry->set_id(ids[i]);
    entry->set_logprob(logprobs[i]);
    if (tokenizer && !tokenizer->IsSpecial(ids[i])) entry->set_token(tokenizer->TokenBytes(ids[i]));
  }
}

}  // namespace

dmoe::v1::FinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop: return dmoe::v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength: return dmoe::v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kNone: break;
  }
  return dmoe::v1::FINISH_REASON_UNSPECIFIED;
}

dmoe::v1::GenerationStats ToProtoStats(const RequestResult& r) {
  dmoe::v1::GenerationStats stats;
  stats.set_forwards(r.forwards);
  stats.set_tokens_per_forward(r.tokens_per_forward());
  stats.set_first_block_seconds(r.first_block_seconds);
  stats.set_seconds(r.seconds);
  stats.set_finish_reason(ToProto(r.finish_reason));
  stats.set_prompt_tokens(r.prompt_tokens);
  stats.set_generated_tokens(static_cast<int64_t>(r.ids.size()));
  stats.set_queue_seconds(r.queue_seconds);
  stats.set_edits(r.edits);
  stats.set_remasks(r.remasks);
  return stats;
}

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

absl::Status GenerationServerOptions::Validate() const {
  if (model_name.empty()) return absl::InvalidArgumentError("model_name is empty");
  return absl::OkStatus();
}

// One Generate call: submitted in the handler, finished from the scheduler's on_done.
class GenerationServer::UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(GenerationServer* server, dmoe::v1::GenerateResponse* response)
      : server_(server), response_(response) {
    server_->active_calls_.fetch_add(1);
  }

  void Start(grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest& request) {
    if (server_->draining_.load()) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining"));
      return;
    }
    absl::StatusOr<auth::Admission> admitted = auth::Authorize(
        *context, server_->options_.api_keys, auth::Role::kUser, auth::CallKind::kGeneration);
    if (!admitted.ok()) {
      Finish(ToGrpcStatus(admitted.status()));
      return;
    }
    admission_ = *std::move(admitted);
    server_->prepare_queue_->Schedule([this, context, &request] { Submit(context, request); });
  }

  // gRPC may call this before Submit has a handle: caller_gone_ covers that window.
  void OnCancel() override {
    caller_gone_.store(true);
    ReportCallerGone();
  }
  void OnDone() override {
    server_->active_calls_.fetch_sub(1);
    delete this;
  }

 private:
  void ReportCallerGone() {
    const uint64_t h = handle_.load();
    if (h != 0 && !gone_reported_.exchange(true)) server_->CallerGone(h);
  }

  // On the prepare queue: tokenize, then hand the request to the scheduler.
  void Submit(grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest& request) {
    absl::StatusOr<PreparedRequest> prepared = server_->Prepare(request);
    if (!prepared.ok()) {
      admission_ = auth::Admission();
      Finish(ToGrpcStatus(prepared.status()));
      return;
    }
    const std::string id =
        request.request_id().empty() ? server_->NewRequestId() : request.request_id();
    response_->set_request_id(id);
    logprobs_ = prepared->logprobs;
    SchedulerRequest sr{.request_id = id,
                                   .prompt = std::move(prepared->prompt),
                                   .params = std::move(prepared->params),
                                   .deadline = DeadlineOf(*context)};
    if (!prepared->stop.empty()) {
      // Stop strings need the text as it grows: detokenize block by block and end the request
      // at the block that completes a match.
      stop_detokenizer_ = std::make_unique<model::StopStringDetokenizer>(
          *server_->tokenizer_, /*skip_special_tokens=*/true, std::move(prepared->stop));
      sr.callbacks.on_tokens = [this](const CommittedTokens& tokens) -> KeepIds {
        model::StopStringDetokenizer::Chunk chunk = stop_detokenizer_->Push(tokens.ids);
        text_ += chunk.text;
        return chunk.stop_after;
      };
    }
    sr.callbacks.on_done = [this](absl::StatusOr<RequestResult> r) {
      OnResult(std::move(r));
    };
    absl::StatusOr<RequestHandle> handle = server_->scheduler_.Submit(std::move(sr));
    if (!handle.ok()) {
      admission_ = auth::Admission();
      Finish(ToGrpcStatus(handle.status()));
      return;
    }
    handle_.store(*handle);
    if (caller_gone_.load()) ReportCallerGone();
  }

  // On the scheduler's step thread. Nothing touches `this` after Finish: OnDone may follow.
  void OnResult(absl::StatusOr<RequestResult> r) {
    // The stream slot is free before the caller sees the end (it may start its next call).
    if (r.ok()) admission_.AddTokens(r->prompt_tokens + static_cast<int64_t>(r->ids.size()));
    admission_ = auth::Admission();
    if (!r.ok()) {
      Finish(ToGrpcStatus(r.status()));
      return;
    }
    response_->mutable_ids()->Add(r->ids.begin(), r->ids.end());
    *response_->mutable_stats() = ToProtoStats(*r);
    if (stop_detokenizer_) {
      response_->set_text(text_ + stop_detokenizer_->Flush());
      response_->mutable_stats()->set_matched_stop(stop_detokenizer_->matched());
    } else if (server_->tokenizer_) {
      response_->set_text(server_->tokenizer_->Decode(r->ids, /*skip_special_tokens=*/true));
    }
    if (logprobs_) {
      AddLogprobs(server_->tokenizer_, r->ids, r->logprobs, 0, r->ids.size(),
                  response_->mutable_logprobs());
    }
    response_->mutable_model()->set_name(server_->options_.model_name);
    response_->mutable_model()->set_version(server_->options_.model_version);
    Finish(grpc::Status::OK);
  }

  GenerationServer* const server_;
  dmoe::v1::GenerateResponse* const response_;
  std::atomic<uint64_t> handle_{0};
  std::atomic<bool> caller_gone_{false};
  std::atomic<bool> gone_reported_{false};
  auth::Admission admission_;  // the tenant's stream slot, until OnDone
  bool logprobs_ = false;
  // With stop strings (step thread only): the text so far.
  std::unique_ptr<model::StopStringDetokenizer> stop_detokenizer_;
  std::string text_;
};

// One GenerateStream call. The scheduler's callbacks queue messages; at most one write is in
// flight (gRPC's rule), the next starts from OnWriteDone. Finish follows the last write.
class GenerationServer::StreamCall final
    : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
 public:
  explicit StreamCall(GenerationServer* server) : server_(server) {
    server_->active_calls_.fetch_add(1);
  }

  void Start(grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest& request) {
    if (server_->draining_.load()) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is draining"));
      return;
    }
    absl::StatusOr<auth::Admission> admitted = auth::Authorize(
        *context, server_->options_.api_keys, auth::Role::kUser, auth::CallKind::kGeneration);
    if (!admitted.ok()) {
      Finish(ToGrpcStatus(admitted.status()));
      return;
    }
    admission_ = *std::move(admitted);
    server_->prepare_queue_->Schedule([this, context, &request] { Submit(context, request); });
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The client is gone: drop what is queued, keep waiting for the scheduler's on_done.
        broken_ = true;
        queue_.clear();
      }
    }
    if (!ok) CancelRequest();
    Pump();
  }
  // gRPC may call this before Submit has a handle: caller_gone_ covers that window.
  void OnCancel() override {
    caller_gone_.store(true);
    CancelRequest();
  }
  void OnDone() override {
    server_->active_calls_.fetch_sub(1);
    delete this;
  }

 private:
  // On the prepare queue: tokenize, then hand the request to the scheduler (no write is in
  // flight before that, so the error paths may Finish directly).
  void Submit(grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest& request) {
    absl::StatusOr<PreparedRequest> prepared = server_->Prepare(request);
    if (!prepared.ok()) {
      admission_ = auth::Admission();
      Finish(ToGrpcStatus(prepared.status()));
      return;
    }
    request_id_ = request.request_id().empty() ? server_->NewRequestId() : request.request_id();
    if (request.resume_from_offset() < 0) {
      admission_ = auth::Admission();
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "resume_from_offset: must be >= 0"));
      return;
    }
    resume_from_offset_ = request.resume_from_offset();
    if (server_->tokenizer_) {
      detokenizer_ = std::make_unique<model::StopStringDetokenizer>(
          *server_->tokenizer_, /*skip_special_tokens=*/true, std::move(prepared->stop));
    }
    logprobs_ = prepared->logprobs;
    SchedulerRequest sr{.request_id = request_id_,
                                   .prompt = std::move(prepared->prompt),
                                   .params = std::move(prepared->params),
                                   .deadline = DeadlineOf(*context)};
    sr.callbacks.on_tokens = [this](const CommittedTokens& tokens) -> KeepIds {
      KeepIds keep;
      dmoe::v1::GenerateStreamResponse msg;
      msg.set_request_id(request_id_);
      dmoe::v1::BlockEvent* block = msg.mutable_block();
      block->set_offset(tokens.offset);
      // A re-attached caller has the ids below resume_from_offset already, and their text.
      // The detokenizer still sees them (so text and stop strings continue where they were),
      // in a push of their own whose text is not sent again.
      const size_t had = static_cast<size_t>(std::clamp<int64_t>(
          resume_from_offset_ - tokens.offset, 0, static_cast<int64_t>(tokens.ids.size())));
      if (detokenizer_) {
        if (had > 0) {
          keep = detokenizer_->Push({tokens.ids.begin(), tokens.ids.begin() + had}).stop_after;
        }
        if (!keep && had < tokens.ids.size()) {
          model::StopStringDetokenizer::Chunk chunk =
              detokenizer_->Push({tokens.ids.begin() + had, tokens.ids.end()});
          block->set_text(std::move(chunk.text));
          if (chunk.stop_after) keep = had + *chunk.stop_after;
        }
      }
      const size_t count = std::min(keep.value_or(tokens.ids.size()), tokens.ids.size());
      const size_t from = std::min(had, count);
      if (from == count && count > 0) return keep;
      block->set_offset(tokens.offset + static_cast<int64_t>(from));
      block->mutable_ids()->Add(tokens.ids.begin() + from, tokens.ids.begin() + count);
      if (logprobs_) {
        AddLogprobs(server_->tokenizer_, tokens.ids, tokens.logprobs, from, count,
                    block->mutable_logprobs());
      }
      Enqueue(std::move(msg), std::nullopt);
      return keep;
    };
    if (request.canvas_events()) {
      sr.callbacks.on_step = [this](const CanvasSnapshot& canvas) {
        dmoe::v1::GenerateStreamResponse msg;
        msg.set_request_id(request_id_);
        dmoe::v1::CanvasEvent* event = msg.mutable_canvas();
        event->set_forward(canvas.forward);
        event->set_block_start(canvas.block_start);
        event->mutable_tokens()->Add(canvas.block.begin(), canvas.block.end());
        event->set_mask_id(canvas.mask_id);
        event->set_prompt_length(canvas.prompt_length);
        if (const model::Tokenizer* tokenizer = server_->tokenizer_) {
          for (int32_t t : canvas.block) {
            const bool text = t != canvas.mask_id && !tokenizer->IsSpecial(t);
            event->add_token_bytes(text ? tokenizer->TokenBytes(t) : std::string());
          }
        }
        Enqueue(std::move(msg), std::nullopt);
      };
    }
    sr.callbacks.on_done = [this](absl::StatusOr<RequestResult> r) {
      if (r.ok()) admission_.AddTokens(r->prompt_tokens + static_cast<int64_t>(r->ids.size()));
      admission_ = auth::Admission();  // free before the caller sees the end
      if (!r.ok()) {
        Enqueue(std::nullopt, ToGrpcStatus(r.status()));
        return;
      }
      dmoe::v1::GenerateStreamResponse msg;
      msg.set_request_id(request_id_);
      dmoe::v1::FinalEvent* final_event = msg.mutable_final();
      *final_event->mutable_stats() = ToProtoStats(*r);
      if (detokenizer_) {
        final_event->set_text(detokenizer_->Flush());
        final_event->mutable_stats()->set_matched_stop(detokenizer_->matched());
      }
      final_event->mutable_model()->set_name(server_->options_.model_name);
      final_event->mutable_model()->set_version(server_->options_.model_version);
      Enqueue(std::move(msg), grpc::Status::OK);
    };
    absl::StatusOr<RequestHandle> handle = server_->scheduler_.Submit(std::move(sr));
    if (!handle.ok()) {
      admission_ = auth::Admission();
      Finish(ToGrpcStatus(handle.status()));
      return;
    }
    handle_.store(*handle);
    if (caller_gone_.load()) CancelRequest();
  }

  // Once per call, whichever of OnCancel, a failed write or Submit sees the caller gone last.
  void CancelRequest() {
    const uint64_t h = handle_.load();
    if (h != 0 && !gone_reported_.exchange(true)) server_->CallerGone(h);
  }

  // Queues a message and/or the final status, then writes if no write is in flight.
  void Enqueue(std::optional<dmoe::v1::GenerateStreamResponse> msg,
               std::optional<grpc::Status> status) {
    {
      absl::MutexLock lock(&mu_);
      if (msg && !broken_) queue_.push_back(*std::move(msg));
      if (status) status_ = std::move(status);
    }
    Pump();
  }

  // Starts the next write, or Finish once everything is written and the status is known.
  // gRPC operations are started outside mu_ so a reaction can never wait on it.
  void Pump() {
    bool write = false;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (!broken_ && !queue_.empty()) {
        current_ = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
        write = true;
      } else if (status_) {
        finished_ = true;
        finish = *status_;
      }
    }
    if (write) {
      StartWrite(&current_);
    } else if (finish) {
      Finish(*finish);  // `this` may be deleted from here on
    }
  }

  GenerationServer* const server_;
  auth::Admission admission_;  // the tenant's stream slot, until OnDone
  std::string request_id_;
  // Step thread only: text as blocks arrive, with the request's stop strings applied.
  std::unique_ptr<model::StopStringDetokenizer> detokenizer_;
  bool logprobs_ = false;
  std::atomic<bool> caller_gone_{false};
  std::atomic<bool> gone_reported_{false};
  int64_t resume_from_offset_ = 0;
  std::atomic<uint64_t> handle_{0};

  absl::Mutex mu_;
  std::deque<dmoe::v1::GenerateStreamResponse> queue_ ABSL_GUARDED_BY(mu_);
  dmoe::v1::GenerateStreamResponse current_;  // the write in flight (owned by it)
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed: the client is gone
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> status_ ABSL_GUARDED_BY(mu_);  // set by on_done
};

absl::StatusOr<std::unique_ptr<GenerationServer>> GenerationServer::Create(
    const GenerationServerOptions& options, Scheduler& scheduler,
    const model::ModelConfig& config, const model::Tokenizer* tokenizer) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  if (config.kind == model::ModelKind::kBlockDiffusion &&
      (options.mask_id < 0 || options.mask_id >= config.vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mask_id: a diffusion model needs its mask token id in [0, ", config.vocab_size,
        "), got ", options.mask_id));
  }
  return std::unique_ptr<GenerationServer>(
      new GenerationServer(options, scheduler, config, tokenizer));
}

GenerationServer::GenerationServer(const GenerationServerOptions& options,
                                   Scheduler& scheduler,
                                   const model::ModelConfig& config,
                                   const model::Tokenizer* tokenizer)
    : options_(options),
      scheduler_(scheduler),
      config_(config),
      tokenizer_(tokenizer),
      prepare_queue_(std::make_unique<WorkQueue>(2)) {
  std::random_device rd;
  request_id_prefix_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

GenerationServer::~GenerationServer() = default;

void GenerationServer::StartDrain() { draining_.store(true); }

void GenerationServer::CallerGone(RequestHandle handle) {
  // With a journal the client may come back (another router, a retry) and re-attach by id.
  if (scheduler_.options().journal != nullptr) {
    scheduler_.Detach(handle);
  } else {
    scheduler_.Cancel(handle);
  }
}

std::string GenerationServer::NewRequestId() {
  return absl::StrCat("req-", absl::Hex(request_id_prefix_ & 0xffffffff, absl::kZeroPad8), "-",
                      next_request_id_.fetch_add(1));
}

absl::Status GenerationServer::CheckModel(const dmoe::v1::ModelSelector& model) const {
  if (!model.name().empty() && model.name() != options_.model_name) {
    return absl::InvalidArgumentError(absl::StrCat("model.name: unknown model '", model.name(),
                                                   "'; this endpoint serves '",
                                                   options_.model_name, "'"));
  }
  if (!model.version().empty() && model.version() != options_.model_version) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.version: unknown version '", model.version(), "' of '", options_.model_name,
        "'; this endpoint serves version '", options_.model_version, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedRequest> GenerationServer::Prepare(
    const dmoe::v1::GenerateRequest& request) const {
  DMOE_RETURN_IF_ERROR(CheckModel(request.model()));
  PreparedRequest out;
  switch (request.prompt_case()) {
    case dmoe::v1::GenerateRequest::kText:
      if (request.text().empty()) return absl::InvalidArgumentError("prompt is empty");
      if (!tokenizer_) return NoTokenizer(options_.model_name, "prompt.text");
      out.prompt = tokenizer_->Encode(request.text());
      break;
    case dmoe::v1::GenerateRequest::kChat: {
      if (!tokenizer_) return NoTokenizer(options_.model_name, "prompt.chat");
      DMOE_ASSIGN_OR_RETURN(out.prompt, EncodeChat(*tokenizer_, request.chat()));
      break;
    }
    case dmoe::v1::GenerateRequest::kPromptIds:
      out.prompt.assign(request.prompt_ids().ids().begin(), request.prompt_ids().ids().end());
      break;
    case dmoe::v1::GenerateRequest::PROMPT_NOT_SET:
      return absl::InvalidArgumentError("prompt is not set: give text, chat or prompt_ids");
  }
  if (out.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");

  const dmoe::v1::DecodingParams& in = request.params();
  engine::DecodingRequest asked;
  switch (in.mode()) {
    case dmoe::v1::DECODE_MODE_UNSPECIFIED: break;
    case dmoe::v1::DECODE_MODE_DIFFUSION: asked.mode = engine::DecodeMode::kDiffusion; break;
    case dmoe::v1::DECODE_MODE_AUTOREGRESSIVE:
      asked.mode = engine::DecodeMode::kAutoregressive;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("params.mode: unknown value ", in.mode()));
  }
  if (in.has_max_new_tokens()) asked.max_new_tokens = in.max_new_tokens();
  if (in.has_threshold()) asked.threshold = in.threshold();
  if (in.has_block_length()) asked.block_length = in.block_length();
  if (in.has_steps()) asked.steps = in.steps();
  if (in.has_temperature()) asked.temperature = in.temperature();
  if (in.has_top_k()) asked.top_k = in.top_k();
  if (in.has_top_p()) asked.top_p = in.top_p();
  if (in.has_seed()) asked.seed = in.seed();
  if (in.has_stop_ids()) {
    asked.stop_ids.emplace(in.stop_ids().ids().begin(), in.stop_ids().ids().end());
  }
  DMOE_ASSIGN_OR_RETURN(asked.editing, engine::ParseEditingPreset(in.editing(), "params.editing"));
  if (in.has_edit_threshold()) asked.edit_threshold = in.edit_threshold();
  if (in.has_max_post_steps()) asked.max_post_steps = in.max_post_steps();
  if (!in.stop().empty()) {
    if (!tokenizer_) return NoTokenizer(options_.model_name, "params.stop");
    out.stop.assign(in.stop().begin(), in.stop().end());
    DMOE_RETURN_IF_ERROR(model::ValidateStopStrings(out.stop, "params.stop"));
  }
  out.logprobs = in.logprobs();
  out.params = engine::BuildGenerationParams(
      asked, engine::ModelDecodingDefaults::For(config_, options_.mask_id, options_.stop_ids));
  return out;
}

dmoe::v1::ModelInfo GenerationServer::Info() const {
  dmoe::v1::ModelInfo info;
  info.set_name(options_.model_name);
  info.set_version(options_.model_version);
  info.set_model_type(config_.model_type);
  info.set_architecture(config_.architecture);
  info.set_default_mode(config_.kind == model::ModelKind::kAutoregressive
                            ? dmoe::v1::DECODE_MODE_AUTOREGRESSIVE
                            : dmoe::v1::DECODE_MODE_DIFFUSION);
  info.set_vocab_size(config_.vocab_size);
  info.set_max_position_embeddings(config_.max_position_embeddings);
  info.set_block_length(config_.block_length);
  info.set_mask_id(options_.mask_id);
  info.mutable_stop_ids()->Add(options_.stop_ids.begin(), options_.stop_ids.end());
  info.set_has_tokenizer(tokenizer_ != nullptr);
  // One server is one version taking every call; a router overrides both (docs/canary.md).
  info.set_traffic_percent(100);
  info.set_stable(true);
  return info;
}

grpc::ServerUnaryReactor* GenerationServer::Generate(grpc::CallbackServerContext* context,
                                                     const dmoe::v1::GenerateRequest* request,
                                                     dmoe::v1::GenerateResponse* response) {
  auto* call = new UnaryCall(this, response);
  call->Start(context, *request);
  return call;
}

grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerationServer::GenerateStream(
    grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) {
  auto* call = new StreamCall(this);
  call->Start(context, *request);
  return call;
}

grpc::ServerUnaryReactor* GenerationServer::Tokenize(grpc::CallbackServerContext* context,
                                                     const dmoe::v1::TokenizeRequest* request,
                                                     dmoe::v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status = [&]() -> absl::Status {
    DMOE_RETURN_IF_ERROR(auth::Authorize(*context, options_.api_keys, auth::Role::kUser,
                                         auth::CallKind::kOther)
                             .status());
    DMOE_RETURN_IF_ERROR(CheckModel(request->model()));
    if (!tokenizer_) return NoTokenizer(options_.model_name, "Tokenize");
    std::vector<int32_t> ids;
    switch (request->input_case()) {
      case dmoe::v1::TokenizeRequest::kText:
        ids = tokenizer_->Encode(request->text());
        break;
      case dmoe::v1::TokenizeRequest::kChat: {
        DMOE_ASSIGN_OR_RETURN(ids, EncodeChat(*tokenizer_, request->chat()));
        break;
      }
      case dmoe::v1::TokenizeRequest::INPUT_NOT_SET:
        return absl::InvalidArgumentError("input is not set: give text or chat");
    }
    response->mutable_ids()->Add(ids.begin(), ids.end());
    for (int32_t id : ids) response->add_tokens(tokenizer_->IdToToken(id).value_or(""));
    return absl::OkStatus();
  }();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationServer::ListModels(grpc::CallbackServerContext* context,
                                                       const dmoe::v1::ListModelsRequest* request,
                                                       dmoe::v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status admitted = auth::Authorize(*context, options_.api_keys, auth::Role::kUser,
                                          auth::CallKind::kOther)
                              .status();
  if (admitted.ok()) *response->add_models() = Info();
  reactor->Finish(ToGrpcStatus(admitted));
  return reactor;
}

}  // namespace dmoe::scheduler
