// The Ling 2.0 chat template (MODEL-SPEC.md §3), written out in C++ so the server needs no
// Jinja engine. It follows the template in Ling-V2's tokenizer_config.json (thinking off, no
// tools): one SYSTEM turn always, a separate OBSERVATION turn per run of tool results, and the
// reasoning of the assistant turns after the last user query kept in a <think> block.
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"

namespace dmoe::model {
namespace {

using tokenizer_internal::Cat;

constexpr std::string_view kRoleEnd = "<|role_end|>";

bool IsToolRole(std::string_view role) { return role == "tool" || role == "observation"; }

std::string_view StripLeft(std::string_view s, char c) {
  while (!s.empty() && s.front() == c) s.remove_prefix(1);
  return s;
}
std::string_view StripRight(std::string_view s, char c) {
  while (!s.empty() && s.back() == c) s.remove_suffix(1);
  return s;
}

// Python's s.split(sep)[0] and s.split(sep)[-1].
std::string_view BeforeFirst(std::string_view s, std::string_view sep) {
  const size_t pos = s.find(sep);
  return pos == std::string_view::npos ? s : s.substr(0, pos);
}
std::string_view AfterLast(std::string_view s, std::string_view sep) {
  const size_t pos = s.rfind(sep);
  return pos == std::string_view::npos ? s : s.substr(pos + sep.size());
}

}  // namespace

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt) {
  std::string out = "<role>SYSTEM</role>";
  if (!messages.empty() && messages[0].role == "system") {
    out += Cat(messages[0].content, "\n");
  }
  out += Cat("detailed thinking off", kRoleEnd);

  // The last user message that is a real query (not a wrapped tool response).
  size_t last_query_index = messages.empty() ? 0 : messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" &&
        !(m.content.starts_with("<tool_response>") && m.content.ends_with("</tool_response>"))) {
      last_query_index = i;
      break;
    }
  }

  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      out += Cat("<role>HUMAN</role>", m.content, kRoleEnd);
    } else if (m.role == "system") {
      if (i != 0) out += Cat("<role>SYSTEM</role>", m.content, kRoleEnd);
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      std::string_view reasoning;
      if (content.find("</think>") != std::string_view::npos) {
        reasoning = StripLeft(
            AfterLast(StripRight(BeforeFirst(content, "</think>"), '\n'), "<think>"), '\n');
        content = StripLeft(AfterLast(content, "</think>"), '\n');
      }
      out.append("<role>ASSISTANT</role>");
      if (i > last_query_index && !reasoning.empty()) {
        out += Cat("\n<think>\n", StripRight(StripLeft(reasoning, '\n'), '\n'), "\n</think>\n\n",
                   StripLeft(content, '\n'));
      } else {
        out.append(content);
      }
      out.append(kRoleEnd);
    } else if (IsToolRole(m.role)) {
      if (i == 0 || !IsToolRole(messages[i - 1].role)) out.append("<role>OBSERVATION</role>");
      out += Cat("\n<tool_response>\n", m.content, "\n</tool_response>");
      if (i + 1 == messages.size() || !IsToolRole(messages[i + 1].role)) out.append(kRoleEnd);
    } else {
      return absl::InvalidArgumentError(
          Cat("chat message ", i, " has unknown role '", m.role,
              "'; expected system, user, assistant, tool or observation"));
    }
  }
  if (add_generation_prompt) out.append("<role>ASSISTANT</role>");
  return out;
}

}  // namespace dmoe::model
