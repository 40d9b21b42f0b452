// dmoe bench: load generator and throughput/latency report.
//
//   dmoe bench --server ADDR  --concurrency N --requests M ...   (any Generation API server:
//                                                                the router, a scheduler, dmoe serve)
//   dmoe bench --engine DIR   --concurrency N --requests M ...   (the bare engine, in process)
//
// The two modes load the system differently:
//  * --server is an open pool of N client threads, each sending its next request through
//    GenerateStream as soon as its previous one ends, so the server always holds up to N
//    requests and batches them continuously (requests join and leave between steps).
//  * --engine is a closed loop of batches: N requests go into one Engine::Generate call, and
//    the next N start only when the whole batch has finished (the slowest request sets the
//    pace). No RPC, no tokenizer, no scheduler.
// Both modes time a request the same way: time to first block (ttfb) runs from the moment the
// request is submitted (the GenerateStream call; the Generate call of its batch) to the moment
// its first committed block is available to the caller (the first `block` event; the engine's
// observer after the forward that finishes it), and latency to the moment its last token is.
// Prompts are deterministic pseudo-random ids (from --seed and the request index) below
// min(vocab, mask id); stop ids are cleared so every request generates --max-new-tokens. The
// decoding flags are the ones of `dmoe generate` (decoding_flags.h), with 32 new tokens.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "clients/cli/decoding_flags.h"
#include "clients/cli/progress.h"
#include "clients/cpp/generation_client.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/generation_params.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct BenchFlags {
  std::string server;
  std::string engine_dir;
  int concurrency = 1;
  int requests = 8;
  int prompt_tokens = 32;
  // > 0: prompt ids come from [0, prompt_vocab) only. Few distinct tokens give few distinct
  // hidden states, so routing concentrates on few experts (expert balancing benches).
  int prompt_vocab = 0;
  DecodingFlags decoding = {.max_new_tokens = 32};
  int32_t mask_id = -1;  // -1: the served / tokenizer's one
  int threads = 0;
  double timeout_seconds = 0;
  bool json = false;
};

// One request's outcome.
struct Sample {
  absl::StatusCode code = absl::StatusCode::kOk;
  int64_t tokens = 0;
  int64_t forwards = 0;
  double first_block_seconds = -1;  // < 0: no block arrived
  double seconds = 0;
};

std::vector<int32_t> MakePrompt(uint64_t seed, int index, int length, int32_t bound) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index) + 1);
  std::uniform_int_distribution<int32_t> dist(0, std::max<int32_t>(bound, 1) - 1);
  std::vector<int32_t> prompt(length);
  for (int32_t& id : prompt) id = dist(rng);
  return prompt;
}

// Nearest-rank percentile of `values` (0 when empty).
double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * values.size()));
  rank = std::clamp<size_t>(rank, 1, values.size());
  return values[rank - 1];
}

absl::StatusOr<std::vector<Sample>> RunServer(const BenchFlags& f, const engine::DecodingRequest& asked,
                                              double* wall) {
  client::ClientOptions options{.target = f.server};
  if (f.timeout_seconds > 0) options.timeout = absl::Seconds(f.timeout_seconds);
  DMOE_ASSIGN_OR_RETURN(auto client, client::GenerationClient::Connect(options));
  DMOE_RETURN_IF_ERROR(client->WaitForReady(absl::Seconds(30)));
  DMOE_ASSIGN_OR_RETURN(dmoe::v1::ListModelsResponse models, client->ListModels());
  if (models.models().empty()) return absl::FailedPreconditionError("the server lists no model");
  const dmoe::v1::ModelInfo& model = models.models(0);
  int32_t bound = static_cast<int32_t>(model.vocab_size());
  const int32_t mask = f.mask_id >= 0 ? f.mask_id : model.mask_id();
  if (mask > 0) bound = std::min(bound, mask);
  if (f.prompt_vocab > 0) bound = std::min(bound, f.prompt_vocab);

  const dmoe::v1::DecodingParams decoding = ToDecodingParamsProto(asked);
  const uint64_t prompt_seed = asked.seed.value_or(0);
  std::vector<Sample> samples(f.requests);
  std::atomic<int> next{0};
  std::atomic<int64_t> finished{0}, generated{0};
  ProgressLine progress("requests", f.requests, StderrIsTerminal());
  const auto start = Clock::now();
  auto report = [&](int64_t tokens) {
    const int64_t total_tokens = generated += tokens;
    progress.Update(++finished,
                    absl::StrFormat("%.1f tokens/s", total_tokens / std::max(Since(start), 1e-9)));
  };
  auto worker = [&] {
    for (int i = next++; i < f.requests; i = next++) {
      dmoe::v1::GenerateRequest request;
      std::vector<int32_t> prompt = MakePrompt(prompt_seed, i, f.prompt_tokens, bound);
      request.mutable_prompt_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
      request.set_request_id(absl::StrCat("bench-", i));
      *request.mutable_params() = decoding;
      Sample& s = samples[i];
      const auto t0 = Clock::now();
      auto final_event = client->GenerateStream(
          request, [&](const dmoe::v1::GenerateStreamResponse& event) {
            if (event.has_block() && s.first_block_seconds < 0) s.first_block_seconds = Since(t0);
            return true;
          });
      s.seconds = Since(t0);
      if (!final_event.ok()) {
        s.code = final_event.status().code();
        report(0);
        continue;
      }
      s.tokens = final_event->stats().generated_tokens();
      s.forwards = final_event->stats().forwards();
      report(s.tokens);
    }
  };
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < f.concurrency; ++t) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  *wall = Since(t0);
  progress.Finish();
  return samples;
}

absl::StatusOr<std::vector<Sample>> RunEngine(const BenchFlags& f, const engine::DecodingRequest& asked,
                                              double* wall) {
  DMOE_ASSIGN_OR_RETURN(auto engine, engine::Engine::Create(
                                         {.model_dir = f.engine_dir, .num_threads = f.threads}));
  const model::ModelConfig& config = engine->config();
  int32_t mask_id = f.mask_id;
  if (mask_id < 0) {
    if (!std::filesystem::exists(std::filesystem::path(f.engine_dir) / "tokenizer.json")) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.engine_dir, " has no tokenizer.json: give --mask-id"));
    }
    DMOE_ASSIGN_OR_RETURN(auto tokenizer, model::Tokenizer::Load(f.engine_dir));
    DMOE_ASSIGN_OR_RETURN(model::DecodeTokenIds ids,
                          model::ResolveDecodeTokenIds(*tokenizer, std::nullopt, asked.stop_ids));
    mask_id = ids.mask_id;
  }
  const engine::GenerationParams params = engine::BuildGenerationParams(
      asked, engine::ModelDecodingDefaults::For(config, mask_id, {}));
  const uint64_t prompt_seed = asked.seed.value_or(0);
  int32_t bound = std::min<int32_t>(static_cast<int32_t>(config.vocab_size), params.mask_id);
  if (f.prompt_vocab > 0) bound = std::min(bound, f.prompt_vocab);

  std::vector<Sample> samples(f.requests);
  ProgressLine progress("requests", f.requests, StderrIsTerminal());
  int64_t generated = 0;
  const auto t0 = Clock::now();
  for (int first = 0; first < f.requests; first += f.concurrency) {
    progress.Update(first, absl::StrFormat("%.1f tokens/s", generated / std::max(Since(t0), 1e-9)));
    const int last = std::min(f.requests, first + f.concurrency);
    std::vector<engine::GenerationRequest> batch;
    for (int i = first; i < last; ++i) {
      batch.push_back({MakePrompt(prompt_seed, i, f.prompt_tokens, bound), params});
    }
    const auto batch_start = Clock::now();
    auto results = engine->Generate(batch);
    if (!results.ok()) {
      const double s = Since(batch_start);
      for (int i = first; i < last; ++i) {
        samples[i].code = results.status().code();
        samples[i].seconds = s;
      }
      continue;
    }
    for (int i = first; i < last; ++i) {
      const engine::GenerationResult& r = (*results)[i - first];
      Sample& s = samples[i];
      s.tokens = static_cast<int64_t>(r.ids.size());
      s.forwards = r.forwards;
      s.first_block_seconds = r.first_block_seconds;
      s.seconds = r.seconds;
      generated += s.tokens;
    }
  }
  progress.Finish();
  *wall = Since(t0);
  return samples;
}

absl::Status RunBench(const BenchFlags& f) {
  if (f.server.empty() == f.engine_dir.empty()) {
    return absl::InvalidArgumentError("give exactly one of --server or --engine");
  }
  if (f.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be >= 1");
  if (f.requests < 1) return absl::InvalidArgumentError("--requests must be >= 1");
  if (f.prompt_tokens < 1) return absl::InvalidArgumentError("--prompt-tokens must be >= 1");
  if (f.prompt_vocab < 0) return absl::InvalidArgumentError("--prompt-vocab must be >= 0");
  DMOE_ASSIGN_OR_RETURN(engine::DecodingRequest asked, ToDecodingRequest(f.decoding));
  asked.stop_ids.emplace();  // every request generates max_new_tokens
  double wall = 0;
  std::vector<Sample> samples;
  if (!f.server.empty()) {
    DMOE_ASSIGN_OR_RETURN(samples, RunServer(f, asked, &wall));
  } else {
    DMOE_ASSIGN_OR_RETURN(samples, RunEngine(f, asked, &wall));
  }

  int64_t tokens = 0, forwards = 0, ok = 0;
  std::vector<double> ttfb, latency;
  std::map<std::string, int64_t> errors;
  for (const Sample& s : samples) {
    if (s.code != absl::StatusCode::kOk) {
      ++errors[absl::StatusCodeToString(s.code)];
      continue;
    }
    ++ok;
    tokens += s.tokens;
    forwards += s.forwards;
    latency.push_back(s.seconds);
    if (s.first_block_seconds >= 0) ttfb.push_back(s.first_block_seconds);
  }
  const double tps = wall > 0 ? static_cast<double>(tokens) / wall : 0;
  const double tpf = forwards > 0 ? static_cast<double>(tokens) / static_cast<double>(forwards) : 0;
  const std::string mode = f.server.empty() ? "engine" : "server";
  if (f.json) {
    nlohmann::json out = {{"mode", mode},
                          {"concurrency", f.concurrency},
                          {"requests", f.requests},
                          {"ok", ok},
                          {"prompt_tokens", f.prompt_tokens},
                          {"max_new_tokens", *asked.max_new_tokens},
                          {"generated_tokens", tokens},
                          {"forwards", forwards},
                          {"wall_seconds", wall},
                          {"tokens_per_second", tps},
                          {"tpf", tpf},
                          {"ttfb_p50", Percentile(ttfb, 50)},
                          {"ttfb_p99", Percentile(ttfb, 99)},
                          {"latency_p50", Percentile(latency, 50)},
                          {"latency_p99", Percentile(latency, 99)},
                          {"errors", errors}};
    std::cout << out.dump() << std::endl;
    return absl::OkStatus();
  }
  std::string error_text;
  for (const auto& [code, n] : errors) {
    absl::StrAppend(&error_text, error_text.empty() ? "" : ",", code, "=", n);
  }
  if (error_text.empty()) error_text = "none";
  std::printf("%-6s %4s %5s %7s %8s %9s %5s %9s %9s %9s %9s  %s\n", "mode", "conc", "reqs",
              "tokens", "wall_s", "tok/s", "TPF", "ttfb_p50", "ttfb_p99", "lat_p50", "lat_p99",
              "errors");
  std::printf("%-6s %4d %5d %7lld %8.3f %9.2f %5.2f %9.3f %9.3f %9.3f %9.3f  %s\n",
              mode.c_str(), f.concurrency, f.requests, static_cast<long long>(tokens), wall, tps,
              tpf, Percentile(ttfb, 50), Percentile(ttfb, 99), Percentile(latency, 50),
              Percentile(latency, 99), error_text.c_str());
  return absl::OkStatus();
}

}  // namespace

void RegisterBenchCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Load-test a server (--server: N client threads streaming) or the bare engine "
      "(--engine: batches of N per Engine::Generate call)");
  cmd->add_option("--server,--router", f->server,
                  "Any Generation API server (router, scheduler, dmoe serve), host:port");
  cmd->add_option("--engine", f->engine_dir, "Checkpoint directory: run the engine in process");
  cmd->add_option("--concurrency", f->concurrency,
                  "Client threads (--server) or requests per Generate call (--engine)")
      ->capture_default_str();
  cmd->add_option("--requests", f->requests, "Requests in all")->capture_default_str();
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "Prompt length in tokens")
      ->capture_default_str();
  AddDecodingFlags(cmd, &f->decoding);
  cmd->add_option("--prompt-vocab", f->prompt_vocab,
                  "Draw prompt ids from [0, N) only (0 = the whole vocabulary): a small N "
                  "concentrates the routing on few experts (skewed expert load)")
      ->capture_default_str();
  cmd->add_option("--mask-id", f->mask_id,
                  "Mask token id (--engine without tokenizer: required; --server: only bounds "
                  "the prompt ids, the server's own mask id applies)");
  cmd->add_option("--threads", f->threads, "--engine: compute threads (0 = all cores)")
      ->capture_default_str();
  cmd->add_option("--timeout", f->timeout_seconds, "--server: per-request deadline, s (0 = none)");
  cmd->add_flag("--json", f->json, "Print one JSON object instead of the table");
  cmd->callback([f, exit_code] {
    absl::Status status = RunBench(*f);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
