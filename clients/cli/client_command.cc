// dmoe client: calls a running server (`dmoe serve`, or a cluster's router) through the C++
// client library. `dmoe client generate` takes the decoding flags of `dmoe generate` and prints
// the same JSON fields with --json.
#include <unistd.h>

#include <cstdio>
#include <map>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "clients/cli/decoding_flags.h"
#include "clients/cli/denoise_view.h"
#include "clients/cpp/generation_client.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {
namespace {

std::string FinishReasonName(dmoe::v1::FinishReason reason) {
  switch (reason) {
    case dmoe::v1::FINISH_REASON_STOP: return "stop";
    case dmoe::v1::FINISH_REASON_LENGTH: return "length";
    default: return "none";
  }
}

struct ClientFlags {
  std::string router;
  std::vector<std::string> fallback_targets;  // --fallback-target, tried after --server
  double retry_timeout_seconds = -1;  // < 0: 30 with fallback targets, 0 (no retry) without
  std::string api_key;  // --api-key or DMOE_API_KEY
  std::string tls_ca;
  double timeout_seconds = 0;  // 0: none
  std::string model;
};

// The decoding flags of `dmoe generate`: each is sent only when given, so the server's
// defaults (the same as `dmoe generate`'s) apply otherwise.
struct GenerateFlags {
  PromptFlags input;
  DecodingFlags decoding;
  std::string stop_ids;
  std::vector<std::string> stop;  // stop strings
  bool logprobs = false;
  std::string request_id;
  bool stream = false;
  bool visual = false;
  bool json = false;
};

// Each retry, one line on stderr.
class RetryLog final : public client::RetryPolicy::Observer {
 public:
  void OnRetry(const absl::Status& failure, int attempt, const std::string& target) override {
    std::fprintf(stderr, "[retry %d on %s after: %s]\n", attempt - 1, target.c_str(),
                 failure.ToString().c_str());
  }
};

absl::StatusOr<std::unique_ptr<client::GenerationClient>> MakeClient(const ClientFlags& c) {
  client::ClientOptions options{.target = c.router, .fallback_targets = c.fallback_targets};
  if (c.timeout_seconds > 0) options.timeout = absl::Seconds(c.timeout_seconds);
  const double retry_seconds = c.retry_timeout_seconds >= 0 ? c.retry_timeout_seconds
                               : c.fallback_targets.empty() ? 0
                                                            : 30;
  if (retry_seconds > 0) {
    // Bounded by time, not by tries: a restarting scheduler takes seconds, whatever the count.
    options.retry.max_attempts = 1'000'000;
    options.retry.max_retry_time = absl::Seconds(retry_seconds);
    static RetryLog* const log = new RetryLog();  // process-long, never destroyed
    options.retry.observer = log;
  }
  options.api_key = c.api_key;
  options.tls_ca_file = c.tls_ca;
  return client::GenerationClient::Connect(options);
}

absl::StatusOr<dmoe::v1::GenerateRequest> BuildRequest(const ClientFlags& c,
                                                       const GenerateFlags& f) {
  dmoe::v1::GenerateRequest request;
  DMOE_RETURN_IF_ERROR(CheckPromptFlags(f.input));
  if (f.input.prompt) {
    request.set_text(*f.input.prompt);
  } else if (f.input.chat) {
    dmoe::v1::ChatMessage* m = request.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(*f.input.chat);
  } else {
    DMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                          ParseIdList(*f.input.prompt_ids, "--prompt-ids"));
    request.mutable_prompt_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  }
  if (!c.model.empty()) request.mutable_model()->set_name(c.model);
  request.set_request_id(f.request_id);
  DMOE_ASSIGN_OR_RETURN(engine::DecodingRequest asked, ToDecodingRequest(f.decoding));
  if (!f.stop_ids.empty()) {
    DMOE_ASSIGN_OR_RETURN(asked.stop_ids, ParseIdList(f.stop_ids, "--stop-ids"));
  }
  *request.mutable_params() = ToDecodingParamsProto(asked);
  for (const std::string& s : f.stop) request.mutable_params()->add_stop(s);
  request.mutable_params()->set_logprobs(f.logprobs);
  request.set_canvas_events(f.visual);
  return request;
}

void PrintResult(const GenerateFlags& f, const std::vector<int32_t>& ids, const std::string& text,
                 const dmoe::v1::GenerationStats& stats, bool text_already_printed,
                 const std::vector<dmoe::v1::TokenLogprob>& logprobs) {
  if (f.json) {
    nlohmann::json out = {{"ids", ids},
                          {"text", SanitizeUtf8(text)},
                          {"forwards", stats.forwards()},
                          {"tokens_per_forward", stats.tokens_per_forward()},
                          {"edits", stats.edits()},
                          {"seconds", stats.seconds()},
                          {"finish_reason", FinishReasonName(stats.finish_reason())},
                          {"prompt_tokens", stats.prompt_tokens()}};
    if (!f.stop.empty()) out["matched_stop"] = stats.matched_stop();
    if (f.logprobs) {
      out["logprobs"] = nlohmann::json::array();
      for (const dmoe::v1::TokenLogprob& t : logprobs) out["logprobs"].push_back(t.logprob());
    }
    std::cout << out.dump() << std::endl;
    return;
  }
  if (!text_already_printed) std::cout << text;
  if (text.empty()) {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? "," : "") << ids[i];
  }
  std::cout << std::endl;
  std::fprintf(stderr,
               "[%zu tokens, %lld forwards, TPF %.2f, first block %.3f s, %.3f s, finish: %s]\n",
               ids.size(), static_cast<long long>(stats.forwards()), stats.tokens_per_forward(),
               stats.first_block_seconds(), stats.seconds(),
               FinishReasonName(stats.finish_reason()).c_str());
  if (f.logprobs) {
    for (const dmoe::v1::TokenLogprob& t : logprobs) {
      std::fprintf(stderr, "%d\t%.6f\t%s\n", t.id(), t.logprob(),
                   nlohmann::json(SanitizeUtf8(t.token())).dump().c_str());
    }
  }
}

absl::Status RunClientGenerate(const ClientFlags& c, const GenerateFlags& f) {
  DMOE_ASSIGN_OR_RETURN(dmoe::v1::GenerateRequest request, BuildRequest(c, f));
  DMOE_ASSIGN_OR_RETURN(auto client, MakeClient(c));
  if (!f.stream && !f.visual) {
    DMOE_ASSIGN_OR_RETURN(dmoe::v1::GenerateResponse response, client->Generate(request));
    std::vector<int32_t> ids(response.ids().begin(), response.ids().end());
    PrintResult(f, ids, response.text(), response.stats(), false,
                {response.logprobs().begin(), response.logprobs().end()});
    return absl::OkStatus();
  }
  std::vector<int32_t> ids;
  std::vector<dmoe::v1::TokenLogprob> logprobs;
  std::string text;
  // --visual: the canvas events through the renderer of `dmoe generate --visual`; the token
  // texts come with each event (the client has no tokenizer).
  std::map<int32_t, std::string> token_text;
  DenoiseView view({.tty = isatty(STDOUT_FILENO) != 0, .width = TerminalColumns(STDOUT_FILENO)},
                   [&token_text](int32_t id) {
                     auto it = token_text.find(id);
                     return it != token_text.end() ? it->second : absl::StrCat("[", id, "]");
                   });
  const bool print_blocks = !f.json && !f.visual;
  DMOE_ASSIGN_OR_RETURN(
      dmoe::v1::FinalEvent final_event,
      client->GenerateStream(request, [&](const dmoe::v1::GenerateStreamResponse& event) {
        if (event.has_block()) {
          ids.insert(ids.end(), event.block().ids().begin(), event.block().ids().end());
          logprobs.insert(logprobs.end(), event.block().logprobs().begin(),
                          event.block().logprobs().end());
          text += event.block().text();
          if (print_blocks) std::cout << event.block().text() << std::flush;
        } else if (event.has_canvas() && f.visual && !f.json) {
          const dmoe::v1::CanvasEvent& c = event.canvas();
          for (int i = 0; i < c.token_bytes_size() && i < c.tokens_size(); ++i) {
            if (c.tokens(i) == c.mask_id()) continue;
            // Empty bytes: a special token (◇, as `dmoe generate --visual` shows it).
            token_text[c.tokens(i)] = c.token_bytes(i).empty() ? "\u25c7" : c.token_bytes(i);
          }
          std::cout << view.Render({.forward = c.forward(),
                                    .block_start = c.block_start(),
                                    .tokens = {c.tokens().begin(), c.tokens().end()},
                                    .mask_id = c.mask_id(),
                                    .prompt_length = c.prompt_length()})
                    << std::flush;
        }
        return true;
      }));
  text += final_event.text();
  if (print_blocks) std::cout << final_event.text();
  if (f.visual && !f.json) std::cout << view.Clear();
  PrintResult(f, ids, text, final_event.stats(), /*text_already_printed=*/print_blocks, logprobs);
  return absl::OkStatus();
}

absl::Status RunClientModels(const ClientFlags& c) {
  DMOE_ASSIGN_OR_RETURN(auto client, MakeClient(c));
  DMOE_ASSIGN_OR_RETURN(dmoe::v1::ListModelsResponse models, client->ListModels());
  nlohmann::json out = nlohmann::json::array();
  for (const dmoe::v1::ModelInfo& m : models.models()) {
    out.push_back({{"name", m.name()},
                   {"version", m.version()},
                   {"model_type", m.model_type()},
                   {"architecture", m.architecture()},
                   {"default_mode", dmoe::v1::DecodeMode_Name(m.default_mode())},
                   {"vocab_size", m.vocab_size()},
                   {"max_position_embeddings", m.max_position_embeddings()},
                   {"block_length", m.block_length()},
                   {"mask_id", m.mask_id()},
                   {"stop_ids", std::vector<int32_t>(m.stop_ids().begin(), m.stop_ids().end())},
                   {"has_tokenizer", m.has_tokenizer()},
                   {"traffic_percent", m.traffic_percent()},
                   {"stable", m.stable()}});
  }
  std::cout << out.dump(2) << std::endl;
  return absl::OkStatus();
}

}  // namespace

void RegisterClientCommand(CLI::App& app, int* exit_code) {
  auto common = std::make_shared<ClientFlags>();
  CLI::App* client = app.add_subcommand("client", "Call a running dmoe server");
  client->require_subcommand(1);
  auto add_common = [common](CLI::App* cmd) {
    cmd->add_option("--server,--router", common->router,
                    "Any Generation API server (router, scheduler, dmoe serve), host:port")
        ->required();
    cmd->add_option("--fallback-target", common->fallback_targets,
                    "Another server (e.g. a second router), host:port; repeatable. A call that "
                    "fails with UNAVAILABLE is retried on the next one, round robin");
    cmd->add_option("--retry-timeout", common->retry_timeout_seconds,
                    "Retry a call that fails with UNAVAILABLE (a dead router or scheduler, a "
                    "broken connection) for up to S seconds, with backoff, on the next target, "
                    "with the same request id; a stream resumes after the last block it "
                    "printed. A journalling scheduler (--journal) re-attaches to the running "
                    "request, any other starts it again (same ids: decoding is deterministic). "
                    "Default: 30 with --fallback-target, else 0 (no retry)");
    cmd->add_option("--timeout", common->timeout_seconds, "Call deadline in seconds (0 = none)");
    cmd->add_option("--model", common->model, "Model name to select (default: the served one)");
    cmd->add_option("--api-key", common->api_key,
                    "API key, sent as 'authorization: Bearer KEY' (docs/security.md)")
        ->envname("DMOE_API_KEY");
    cmd->add_option("--tls-ca", common->tls_ca,
                    "PEM CA of the server's certificate: connect with TLS");
  };

  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* gen = client->add_subcommand("generate", "Generate text through the server");
  add_common(gen);
  AddPromptFlags(gen, &flags->input);
  AddDecodingFlags(gen, &flags->decoding);
  gen->add_option("--stop-ids", flags->stop_ids, "Override the stop token ids, e.g. 5,7");
  gen->add_option("--stop", flags->stop,
                  "Stop string (repeatable): the output ends before its first match");
  gen->add_flag("--logprobs", flags->logprobs,
                "Also print each generated token's log-probability (stderr; --json: logprobs)");
  gen->add_option("--request-id", flags->request_id,
                  "Request id for the server's logs; with a journalling scheduler it names the "
                  "request, and a call with the id of a running one re-attaches to it (made up "
                  "by the client when it retries and none is given)");
  gen->add_flag("--stream", flags->stream, "Print text as blocks commit (GenerateStream)");
  gen->add_flag("--visual", flags->visual,
                "Show the block being denoised after every forward (canvas events)");
  gen->add_flag("--json", flags->json, "Print one JSON object: ids, text, forwards, ...");
  gen->callback([common, flags, exit_code] {
    absl::Status status = RunClientGenerate(*common, *flags);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });

  CLI::App* models = client->add_subcommand("models", "List the served models (JSON)");
  add_common(models);
  models->callback([common, exit_code] {
    absl::Status status = RunClientModels(*common);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
