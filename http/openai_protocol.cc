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
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      call.stop.push_back(it->get<std::string>());
    } else if (it->is_array() && it->size() <= 4) {
      for (const Json& s : *it) {
        if (!s.is_string()) return Bad("stop", "must be a string or an array of strings");
        call.stop.push_back(s.get<std::string>());
      }
    } else {
      return Bad("stop", "must be a string or an array of at most 4 strings");
    }
    for (const std::string& s : call.stop) {
      if (s.empty()) return Bad("stop", "stop strings must not be empty");
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
  if (auto it = body.find("logprobs");
      it != body.end() && !it->is_null() && !(it->is_boolean() && !it->get<bool>())) {
    return Bad("logprobs", "log-probabilities are not supported yet");
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

nlohmann::json CompletionJson(const OpenAiCall& call, const std::string& id, int64_t created,
                              const std::string& model, const std::string& text,
                              const std::string& finish_reason,
                              const dmoe::v1::GenerationStats& stats) {
  Json out = Envelope(call, id, created, model, /*chunk=*/false);
  Json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
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
                         const std::string& finish_reason, bool first) {
  Json out = Envelope(call, id, created, model, /*chunk=*/true);
  Json choice = {{"index", 0}, {"logprobs", nullptr}};
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

StopMatcher::StopMatcher(std::vector<std::string> stop) : stop_(std::move(stop)) {
  for (const std::string& s : stop_) {
    if (!s.empty()) hold_ = std::max(hold_, s.size() - 1);
  }
}

std::string StopMatcher::Push(absl::string_view text) {
  if (stopped_) return "";
  pending_.append(text.data(), text.size());
  size_t match = std::string::npos;
  for (const std::string& s : stop_) match = std::min(match, pending_.find(s));
  if (match != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, match);
    pending_.clear();
    return out;
  }
  // Keep the last hold_ bytes: they might be the start of a stop string.
  if (pending_.size() <= hold_) return "";
  size_t cut = pending_.size() - hold_;
  // Never split a UTF-8 character: back up to its first byte.
  while (cut > 0 && cut < pending_.size() &&
         (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out = stopped_ ? "" : pending_;
  pending_.clear();
  return out;
}

}  // namespace dmoe::http
