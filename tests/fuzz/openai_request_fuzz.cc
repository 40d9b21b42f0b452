// ParseOpenAiRequest on arbitrary HTTP bodies (the public HTTP port), for both endpoints; the
// first byte picks the endpoint. An accepted request's fields are then used as the server
// does: the stream/usage JSON builders and ErrorJson of a refusal.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "http/openai_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto endpoint =
      (data[0] & 1) ? dmoe::http::Endpoint::kChatCompletions : dmoe::http::Endpoint::kCompletions;
  const absl::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  auto call = dmoe::http::ParseOpenAiRequest(body, endpoint);
  if (!call.ok()) {
    (void)dmoe::http::ErrorJson(call.status()).dump();
    (void)dmoe::http::HttpStatusFor(call.status().code());
    return 0;
  }
  dmoe::v1::GenerationStats stats;
  stats.set_prompt_tokens(3);
  stats.set_generated_tokens(2);
  (void)dmoe::http::ChunkJson(*call, "id", 1, call->model, "text", "", true).dump();
  (void)dmoe::http::CompletionJson(*call, "id", 1, call->model, "text", "stop", stats).dump();
  (void)dmoe::http::UsageChunkJson(*call, "id", 1, call->model, stats).dump();
  google::protobuf::RepeatedPtrField<dmoe::v1::TokenLogprob> logprobs;
  auto* lp = logprobs.Add();
  lp->set_id(1);
  lp->set_logprob(-0.5f);
  lp->set_token("\xe4\xb8");
  (void)dmoe::http::LogprobsJson(*call, logprobs, 0).dump();
  return 0;
}
