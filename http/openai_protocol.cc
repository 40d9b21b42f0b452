#include "http/openai_protocol.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dmoe::http {
namespace {

using Json = nlohmann::json;

absl::Status Bad(absl::string_view param, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

std::string TypeName(const Json& v) { return v.type_name(); }

// The optional field `name` of `body` as T; absent or null leaves `out` alone.
absl::Status Integer(const Json& body, const char* name, int64_t min, int64_t max,
                     std::optional<int64_t>* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) {
    return Bad(name, absl::StrCat("must be an integer, got ", TypeName(*it)));
  }
  const int64_t v = it->is_number_unsigned()
                        ? static_cast<int64_t>(std::min<uint64_t>(
                              it->get<uint64_t>(), std::numeric_limits<int64_t>::max()))
                        : it->get<int64_t>();
  if (v < min || v > max) {
    return Bad(name, absl::StrCat("must be in [", min, ", ", max, "], got ", v));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status Number(const Json& body, const char* name, double min, double max,
                    std::optional<double>* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Bad(name, absl::StrCat("must be a number, got ", TypeName(*it)));
  const double v = it->get<double>();
  if (!(v >= min && v <= max)) {
    return Bad(name, absl::StrCat("must be in [", min, ", ", max, "], got ", v));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status Bool(const Json& body, const char* name, bool* out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return Bad(name, absl::StrCat("must be a boolean, got ", TypeName(*it)));
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> IdArray(const Json& v, absl::string_view name) {
  std::vector<int32_t> ids;
  for (const Json& id : v) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Bad(name, "must be an array of token ids (non-negative integers)");
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return ids;
}

// A chat message's content: a string, or an array of {"type": "text", "text": ...} parts.
absl::StatusOr<std::string> MessageContent(const Json& content, size_t index) {
  const std::string param = absl::StrCat("messages[", index, "].content");
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return Bad(param, "must be a string or an array of text parts");
  std::string text;
  for (const Json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return Bad(param, "only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

absl::Status ParsePrompt(const Json& body, Endpoint endpoint, dmoe::v1::GenerateRequest* r) {
  if (endpoint == Endpoint::kChatCompletions) {
    auto it = body.find("messages");
    if (it == body.end() || !it->is_array() || it->empty()) {
      return Bad("messages", "must be a non-empty array of {\"role\", \"content\"}");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& m = (*it)[i];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return Bad(absl::StrCat("messages[", i, "].role"), "must be a string");
      }
      absl::StatusOr<std::string> content =
          MessageContent(m.contains("content") ? m["content"] : Json(nullptr), i);
      if (!content.ok()) return content.status();
      dmoe::v1::ChatMessage* message = r->mutable_chat()->add_messages();
      message->set_role(m["role"].get<std::string>());
      message->set_content(*content);
    }
    return absl::OkStatus();
  }
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return Bad("prompt", "is required");
  Json prompt = *it;
  // One prompt per request: ["text"] and [[ids]] are the batched forms of one prompt.
  if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array())) {
    prompt = Json(prompt[0]);
  }
  if (prompt.is_string()) {
    if (prompt.get<std::string>().empty()) return Bad("prompt", "is empty");
    r->set_text(prompt.get<std::string>());
    return absl::OkStatus();
  }
  if (prompt.is_array() && !prompt.empty() && prompt[0].is_number()) {
    absl::StatusOr<std::vector<int32_t>> ids = IdArray(prompt, "prompt");
    if (!ids.ok()) return ids.status();
    r->mutable_prompt_ids()->mutable_ids()->Add(ids->begin(), ids->end());
    return absl::OkStatus();
  }
  if (prompt.is_array() && prompt.size() > 1) {
    return Bad("prompt", "several prompts in one request are not supported: send one each");
  }
  return Bad("prompt", "must be a string or an array of token ids");
}

}  // namespace

absl::StatusOr<OpenAiCall> ParseOpenAiRequest(absl::string_view body_text, Endpoint endpoint) {
  const Json body = Json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return Bad("body", "is not valid JSON");
  if (!body.is_object()) return Bad("body", "must be a JSON object");

  OpenAiCall call;
  call.endpoint = endpoint;
  if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return Bad("model", "must be a string");
    call.model = it->get<std::string>();
    call.request.mutable_model()->set_name(call.model);
  }
  if (absl::Status s = ParsePrompt(body, endpoint, &call.request); !s.ok()) return s;

  dmoe::v1::DecodingParams* p = call.request.mutable_params();
  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  std::optional<int64_t> max_tokens, n, seed, top_k, block_length, steps;
  if (absl::Status s = Integer(body, "max_tokens", 1, kMaxInt, &max_tokens); !s.ok()) return s;
  // Chat's newer name wins over the deprecated one, as in OpenAI's API.
  if (absl::Status s = Integer(body, "max_completion_tokens", 1, kMaxInt, &max_tokens); !s.ok()) {
    return s;
  }
  if (max_tokens) p->set_max_new_tokens(*max_tokens);
  if (absl::Status s = Integer(body, "n", 1, 1, &n); !s.ok()) {
    return Bad("n", "only n = 1 is supported");
  }
  if (absl::Status s = Integer(body, "seed", 0, std::numeric_limits<int64_t>::max(), &seed);
      !s.ok()) {
    return s;
  }
  if (seed) p->set_seed(static_cast<uint64_t>(*seed));
  if (absl::Status s = Integer(body, "top_k", 0, kMaxInt, &top_k); !s.ok()) return s;
  if (top_k) p->set_top_k(static_cast<int32_t>(*top_k));
  if (absl::Status s = Integer(body, "block_length", 1, 4096, &block_length); !s.ok()) return s;
  if (block_length) p->set_block_length(*block_length);
  if (absl::Status s = Integer(body, "steps", 1, kMaxInt, &steps); !s.ok()) return s;
  if (steps) p->set_steps(*steps);
  std::optional<double> temperature, top_p, threshold;
  if (absl::Status s = Number(body, "temperature", 0, 2, &temperature); !s.ok()) return s;
  if (temperature) p->set_temperature(static_cast<float>(*temperature));
  if (absl::Status s = Number(body, "top_p", 0, 1, &top_p); !s.ok()) return s;
  if (top_p) p->set_top_p(static_cast<float>(*top_p));
  if (absl::Status s = Number(body, "threshold", 0, 1, &threshold); !s.ok()) return s;
  if (threshold) p->set_threshold(static_cast<float>(*threshold));
  // LLaDA2.1 token editing: the Generation API's names; the server checks `editing`.
  std::optional<double> edit_threshold;
  std::optional<int64_t> max_post_steps;
  if (absl::Status s = Number(body, "edit_threshold", 0, 1, &edit_threshold); !s.ok()) return s;
  if (edit_threshold) p->set_edit_threshold(static_cast<float>(*edit_threshold));
  if (absl::Status s = Integer(body, "max_post_steps", 0, 4096, &max_post_steps); !s.ok()) {
    return s;
  }
  if (max_post_steps) p->set_max_post_steps(*max_post_steps);
  if (auto it = body.find("editing"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return Bad("editing", "must be \"off\", \"speed\" or \"quality\"");
    p->set_editing(it->get<std::string>());
  }

  if (absl::Status s = Bool(body, "stream", &call.stream); !s.ok()) return s;
  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return Bad("stream_options", "must be an object");
    if (absl::Status s = Bool(*it, "include_usage", &call.include_usage); !s.ok()) {
      return Bad("stream_options.include_usage", "must be a boolean");
    }
  }
  // Stop strings go to the server, which cuts the output before the first match (and stops
  // decoding there); OpenAI allows up to 4.
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    std::vector<std::string> stop;
    if (it->is_string()) {
      stop.push_back(it->get<std::string>());
    } else if (it->is_array() && it->size() <= 4) {
      for (const Json& s : *it) {
        if (!s.is_string()) return Bad("stop", "must be a string or an array of strings");
        stop.push_back(s.get<std::string>());
      }
    } else {
      return Bad("stop", "must be a string or an array of at most 4 strings");
    }
    for (const std::string& s : stop) {
      if (s.empty()) return Bad("stop", "stop strings must not be empty");
      p->add_stop(s);
    }
  }
  if (auto it = body.find("stop_token_ids"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return Bad("stop_token_ids", "must be an array of token ids");
    absl::StatusOr<std::vector<int32_t>> ids = IdArray(*it, "stop_token_ids");
    if (!ids.ok()) return ids.status();
    call.stop_token_ids = *std::move(ids);
  }
  if (auto it = body.find("user"); it != body.end() && !it->is_null() && !it->is_string()) {
    return Bad("user", "must be a string");
  }
  // Log-probabilities of the chosen tokens. Completions take `logprobs: N` (N alternatives
  // per token), chat `logprobs: true` + `top_logprobs: N`: dmoe reports no alternatives, so
  // N must be 0 (the denoiser keeps only each position's most likely token).
  if (auto it = body.find("logprobs"); it != body.end() && !it->is_null()) {
    if (it->is_boolean()) {
      p->set_logprobs(it->get<bool>());
    } else if (endpoint == Endpoint::kCompletions && it->is_number_integer()) {
      if (it->get<int64_t>() != 0) {
        return Bad("logprobs", "only 0 is supported: dmoe returns the chosen token's "
                               "log-probability, not alternatives");
      }
      p->set_logprobs(true);
    } else {
      return Bad("logprobs", endpoint == Endpoint::kCompletions ? "must be an integer (0)"
                                                                : "must be a boolean");
    }
  }
  std::optional<int64_t> top_logprobs;
  if (absl::Status s = Integer(body, "top_logprobs", 0, 20, &top_logprobs); !s.ok()) return s;
  if (top_logprobs.value_or(0) > 0) {
    return Bad("top_logprobs", "only 0 is supported: dmoe returns the chosen token's "
                               "log-probability, not alternatives");
  }
  if (auto it = body.find("echo"); it != body.end() && it->is_boolean() && it->get<bool>()) {
    return Bad("echo", "echo is not supported");
  }
  return call;
}

std::string FinishReasonName(dmoe::v1::FinishReason reason) {
  return reason == dmoe::v1::FINISH_REASON_LENGTH ? "length" : "stop";
}

nlohmann::json UsageJson(const dmoe::v1::GenerationStats& stats) {
  return {{"prompt_tokens", stats.prompt_tokens()},
          {"completion_tokens", stats.generated_tokens()},
          {"total_tokens", stats.prompt_tokens() + stats.generated_tokens()},
          {"forwards", stats.forwards()},
          {"tokens_per_forward", stats.tokens_per_forward()}};
}

namespace {

Json Envelope(const OpenAiCall& call, const std::string& id, int64_t created,
              const std::string& model, bool chunk) {
  const bool chat = call.endpoint == Endpoint::kChatCompletions;
  return {{"id", id},
          {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                          : "text_completion"},
          {"created", created},
          {"model", model}};
}

}  // namespace

// OpenAI's form for a token's text: the bytes when they are valid UTF-8, else "bytes:\xNN..."
// (a token holding part of a character).
std::string TokenText(const std::string& bytes) {
  bool valid = true;
  for (size_t i = 0; i < bytes.size() && valid;) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > bytes.size()) {
      valid = false;
      break;
    }
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(bytes[i + k]) & 0xC0) != 0x80) valid = false;
    }
    i += len;
  }
  if (valid) return bytes;
  std::string out = "bytes:";
  for (unsigned char c : bytes) absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
  return out;
}

nlohmann::json LogprobsJson(const OpenAiCall& call,
                            const google::protobuf::RepeatedPtrField<dmoe::v1::TokenLogprob>& tokens,
                            int64_t text_offset) {
  if (!call.request.params().logprobs()) return nullptr;
  if (call.endpoint == Endpoint::kChatCompletions) {
    Json content = Json::array();
    for (const dmoe::v1::TokenLogprob& t : tokens) {
      Json bytes = Json::array();
      for (unsigned char c : t.token()) bytes.push_back(static_cast<int>(c));
      content.push_back({{"token", TokenText(t.token())},
                         {"logprob", t.logprob()},
                         {"bytes", bytes},
                         {"top_logprobs", Json::array()}});
    }
    return {{"content", content}};
  }
  Json texts = Json::array(), logprobs = Json::array(), offsets = Json::array();
  for (const dmoe::v1::TokenLogprob& t : tokens) {
    texts.push_back(TokenText(t.token()));
    logprobs.push_back(t.logprob());
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(t.token().size());
  }
  return {{"tokens", texts},
          {"token_logprobs", logprobs},
          {"top_logprobs", nullptr},
          {"text_offset", offsets}};
}

nlohmann::json CompletionJson(const OpenAiCall& call, const std::string& id, int64_t created,
                              const std::string& model, const std::string& text,
                              const std::string& finish_reason,
                              const dmoe::v1::GenerationStats& stats, const Json& logprobs) {
  Json out = Envelope(call, id, created, model, /*chunk=*/false);
  Json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", logprobs}};
  if (call.endpoint == Endpoint::kChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  out["choices"] = Json::array({choice});
  out["usage"] = UsageJson(stats);
  return out;
}

nlohmann::json ChunkJson(const OpenAiCall& call, const std::string& id, int64_t created,
                         const std::string& model, const std::string& text,
                         const std::string& finish_reason, bool first, const Json& logprobs) {
  Json out = Envelope(call, id, created, model, /*chunk=*/true);
  Json choice = {{"index", 0}, {"logprobs", logprobs}};
  choice["finish_reason"] = finish_reason.empty() ? Json(nullptr) : Json(finish_reason);
  if (call.endpoint == Endpoint::kChatCompletions) {
    Json delta = Json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  out["choices"] = Json::array({choice});
  if (call.include_usage) out["usage"] = nullptr;
  return out;
}

nlohmann::json UsageChunkJson(const OpenAiCall& call, const std::string& id, int64_t created,
                              const std::string& model, const dmoe::v1::GenerationStats& stats) {
  Json out = Envelope(call, id, created, model, /*chunk=*/true);
  out["choices"] = Json::array();
  out["usage"] = UsageJson(stats);
  return out;
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

nlohmann::json ErrorJson(const absl::Status& status) {
  const int http = HttpStatusFor(status.code());
  std::string message(status.message());
  // "PARAM: what" (ParseOpenAiRequest, and the server's own "field: ..." messages).
  Json param = nullptr;
  if (const size_t colon = message.find(": ");
      colon != std::string::npos && message.find(' ') > colon && colon > 0) {
    param = message.substr(0, colon);
  }
  const char* type = http == 401   ? "authentication_error"
                     : http == 403 ? "permission_error"
                     : http == 404 ? "not_found_error"
                     : http == 429 ? "rate_limit_error"
                     : http < 500  ? "invalid_request_error"
                                   : "server_error";
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param},
            {"code", absl::StatusCodeToString(status.code())}}}};
}

}  // namespace dmoe::http
