// The gRPC adapter of the public API (proto/dmoe/v1/generation.proto) over a Scheduler: it
// validates and tokenizes requests, enqueues them, streams committed blocks as they arrive and
// maps absl::Status to gRPC status codes (common/grpc_status.h). It owns no request state: a
// call's reactor lives until gRPC's OnDone, the request itself lives in the scheduler.
//
// Reactors never block (STYLE.md §7): handlers convert and Submit() (which only queues), the
// scheduler's step thread fills responses and queues writes; a client that disconnects or
// runs out of deadline cancels its scheduler request, which frees its KV at the next step.
#ifndef DMOE_SCHEDULER_GENERATION_SERVER_H_
#define DMOE_SCHEDULER_GENERATION_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/api_keys.h"
#include "common/work_queue.h"
#include "engine/sequence.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "scheduler/scheduler.h"

namespace dmoe::scheduler {

struct GenerationServerOptions {
  // The name requests may select in `model.name` and ListModels reports (e.g. the checkpoint
  // directory's name). Must not be empty.
  std::string model_name;
  std::string model_version;  // "" = unversioned
  // Decoding ids of the model (from the tokenizer or flags): mask_id is required for
  // diffusion models; stop_ids are the default stop tokens.
  int32_t mask_id = -1;
  std::vector<int32_t> stop_ids = {};
  // API keys every call must present (docs/security.md); not owned, must outlive the server.
  // Null: no authentication.
  auth::ApiKeys* api_keys = nullptr;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// A GenerateRequest turned into what the scheduler needs.
struct PreparedRequest {
  std::vector<int32_t> prompt;
  engine::GenerationParams params;
  std::vector<std::string> stop;  // stop strings (validated; only with a tokenizer)
  bool logprobs = false;
};

// Thread-safe (gRPC calls the handlers from its own threads). The scheduler, config and
// tokenizer must outlive this object, and this object must outlive the grpc::Server it is
// registered with.
class GenerationServer final : public dmoe::v1::Generation::CallbackService {
 public:
  // `tokenizer` may be null: then only prompt_ids prompts work, Tokenize is
  // FAILED_PRECONDITION and responses carry no text. INVALID_ARGUMENT for bad options or a
  // diffusion model without a mask id.
  static absl::StatusOr<std::unique_ptr<GenerationServer>> Create(
      const GenerationServerOptions& options, Scheduler& scheduler,
      const model::ModelConfig& config, const model::Tokenizer* tokenizer);
  ~GenerationServer() override;

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const dmoe::v1::GenerateRequest* request,
                                     dmoe::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const dmoe::v1::TokenizeRequest* request,
                                     dmoe::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dmoe::v1::ListModelsRequest* request,
                                       dmoe::v1::ListModelsResponse* response) override;

  // From now on Generate/GenerateStream answer UNAVAILABLE; calls in flight go on.
  void StartDrain();
  // Generate/GenerateStream calls whose reactor has not seen OnDone yet.
  int64_t active_calls() const { return active_calls_.load(); }

  // The request as the scheduler will run it: the prompt (tokenized text, rendered chat or
  // ids) and complete decoding parameters (request values over the model's defaults). Does
  // not check what the scheduler checks (lengths, value ranges). Errors:
  // INVALID_ARGUMENT naming the field (no or empty prompt, unknown model.name/version,
  // mode), FAILED_PRECONDITION for text/chat prompts without a tokenizer.
  absl::StatusOr<PreparedRequest> Prepare(const dmoe::v1::GenerateRequest& request) const;
  // ListModels' single entry.
  dmoe::v1::ModelInfo Info() const;

 private:
  class UnaryCall;
  class StreamCall;

  GenerationServer(const GenerationServerOptions& options, Scheduler& scheduler,
                   const model::ModelConfig& config, const model::Tokenizer* tokenizer);
  absl::Status CheckModel(const dmoe::v1::ModelSelector& model) const;
  std::string NewRequestId();
  // A call's client went away (cancelled, deadline, broken stream): Cancel its request, or
  // with a journal Detach it (the client may re-attach by request id).
  void CallerGone(RequestHandle handle);

  const GenerationServerOptions options_;
  Scheduler& scheduler_;
  const model::ModelConfig& config_;
  const model::Tokenizer* tokenizer_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> active_calls_{0};
  std::atomic<uint64_t> next_request_id_{0};
  // Prepare (tokenizing the prompt, the chat template) runs here, off gRPC's reactor threads:
  // a long prompt must not hold a thread every other call needs. Last member: destroyed
  // first, after running what is queued, while everything its tasks use still exists.
  std::unique_ptr<WorkQueue> prepare_queue_;
  uint64_t request_id_prefix_ = 0;
};

// absl -> proto helpers shared with tests.
dmoe::v1::FinishReason ToProto(engine::FinishReason reason);
dmoe::v1::GenerationStats ToProtoStats(const RequestResult& result);
// A gRPC deadline as absl::Time (InfiniteFuture for "none").
absl::Time DeadlineOf(const grpc::CallbackServerContext& context);

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_GENERATION_SERVER_H_
