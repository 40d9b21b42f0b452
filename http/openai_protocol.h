// The OpenAI wire format (docs/http-api.md) as pure functions: JSON request bodies of
// /v1/completions and /v1/chat/completions to a Generation API request, results and stream
// chunks to JSON, a status to OpenAI's error body and HTTP status. No I/O: the server in
// openai_server.h does the HTTP and the gRPC calls.
#ifndef DMOE_HTTP_OPENAI_PROTOCOL_H_
#define DMOE_HTTP_OPENAI_PROTOCOL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "proto/dmoe/v1/generation.pb.h"

namespace dmoe::http {

enum class Endpoint { kCompletions, kChatCompletions };

// One parsed request.
struct OpenAiCall {
  Endpoint endpoint = Endpoint::kCompletions;
  bool stream = false;
  bool include_usage = false;       // stream_options.include_usage
  std::string model;                // as the client named it ("" = the served one)
  std::vector<int32_t> stop_token_ids;  // added to the model's stop ids
  // Prompt and decoding knobs, stop strings (params.stop, applied by the server) and
  // params.logprobs included; stop ids not set yet.
  dmoe::v1::GenerateRequest request;
};

// INVALID_ARGUMENT with the message "PARAM: what is wrong" (ErrorJson turns PARAM into the
// error's `param`). Unknown fields are ignored, as OpenAI's own server does.
absl::StatusOr<OpenAiCall> ParseOpenAiRequest(absl::string_view body, Endpoint endpoint);

// Usage block: OpenAI's three counts plus dmoe's diffusion figures.
nlohmann::json UsageJson(const dmoe::v1::GenerationStats& stats);

// "stop" / "length" (OpenAI's finish_reason) from the Generation API's.
std::string FinishReasonName(dmoe::v1::FinishReason reason);

// A choice's `logprobs` for these tokens: null without params.logprobs; for completions
// {tokens, token_logprobs, top_logprobs: null, text_offset} (offsets from `text_offset` on),
// for chat {content: [{token, logprob, bytes, top_logprobs: []}]}. A token that is not valid
// UTF-8 on its own (part of a character) is written "bytes:\xNN..." as OpenAI does.
nlohmann::json LogprobsJson(const OpenAiCall& call,
                            const google::protobuf::RepeatedPtrField<dmoe::v1::TokenLogprob>& tokens,
                            int64_t text_offset);

// The whole (non-streamed) response.
nlohmann::json CompletionJson(const OpenAiCall& call, const std::string& id, int64_t created,
                              const std::string& model, const std::string& text,
                              const std::string& finish_reason,
                              const dmoe::v1::GenerationStats& stats,
                              const nlohmann::json& logprobs = nullptr);

// One `data:` chunk of a stream. `finish_reason` empty = null; `first` adds the assistant role
// (chat). Without text and finish reason, with `usage`: the include_usage chunk (no choices).
nlohmann::json ChunkJson(const OpenAiCall& call, const std::string& id, int64_t created,
                         const std::string& model, const std::string& text,
                         const std::string& finish_reason, bool first,
                         const nlohmann::json& logprobs = nullptr);
nlohmann::json UsageChunkJson(const OpenAiCall& call, const std::string& id, int64_t created,
                              const std::string& model, const dmoe::v1::GenerationStats& stats);

// {"error": {"message", "type", "param", "code"}} and the HTTP status for `status`'s code.
nlohmann::json ErrorJson(const absl::Status& status);
int HttpStatusFor(absl::StatusCode code);

}  // namespace dmoe::http

#endif  // DMOE_HTTP_OPENAI_PROTOCOL_H_
