// dmoe eval: exact-match accuracy of a model on a JSONL task file, with the decoding figures
// that go with it (tokens per forward, forwards, tokens/s), per task and overall.
//
// Task file: one JSON object per line,
//   {"task": "add", "chat": "What is 2 + 3?", "answer": "5"}          user turn, chat template
//   {"task": "add", "prompt": "2 + 3 =", "answer": "5"}               raw prompt text
//   {"task": "add", "prompt": [{"role": "user", "content": "..."}], "answer": "5"}  messages
// "task" defaults to "default". A sample is correct when the generated text (special tokens
// skipped, cut after the first stop token as generate does) equals the answer after trimming
// whitespace at both ends. With token editing (--editing / --edit-threshold) the figures include
// the edits (T2T rewrites, re-masks among them).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "clients/cli/decoding_flags.h"
#include "clients/cli/progress.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {
namespace {

using Json = nlohmann::json;

struct EvalFlags {
  std::string model_dir;
  std::string tasks_file;
  DecodingFlags decoding = {.max_new_tokens = 64};  // short answers: eval tasks are exact-match
  int64_t limit = 0;           // per task; 0 = all
  int64_t batch = 1;           // requests per Generate call (1 = one request at a time)
  std::string samples_file;    // per-sample JSONL output
  bool json = false;
  std::string kernels = "cpu";
  int threads = 0;
};

struct EvalSample {
  std::string task;
  std::string prompt_text;  // what is tokenised
  std::string answer;
  int line = 0;
};

struct TaskStats {
  int64_t n = 0, correct = 0, tokens = 0, forwards = 0, edits = 0, remasks = 0;
  double seconds = 0;

  void Add(const TaskStats& o) {
    n += o.n;
    correct += o.correct;
    tokens += o.tokens;
    forwards += o.forwards;
    edits += o.edits;
    remasks += o.remasks;
    seconds += o.seconds;
  }
  double accuracy() const { return n ? static_cast<double>(correct) / n : 0.0; }
  double tpf() const { return forwards ? static_cast<double>(tokens) / forwards : 0.0; }
  double tps() const { return seconds > 0 ? tokens / seconds : 0.0; }
  Json ToJson() const {
    return {{"n", n},
            {"correct", correct},
            {"accuracy", accuracy()},
            {"tokens", tokens},
            {"forwards", forwards},
            {"edits", edits},
            {"remasks", remasks},
            {"tokens_per_forward", tpf()},
            {"seconds", seconds},
            {"tokens_per_second", tps()}};
  }
};

bool ExactMatch(const std::string& output, const std::string& answer) {
  return absl::StripAsciiWhitespace(output) == absl::StripAsciiWhitespace(answer);
}

absl::StatusOr<std::vector<EvalSample>> ReadTasks(const std::string& path, int64_t limit) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<EvalSample> samples;
  std::map<std::string, int64_t> per_task;
  std::string line;
  int line_no = 0;
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": ", what));
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
    EvalSample s;
    s.line = line_no;
    s.task = j.contains("task") && j["task"].is_string() ? j["task"].get<std::string>() : "default";
    if (!j.contains("answer") || !j["answer"].is_string()) return bad("missing string 'answer'");
    s.answer = j["answer"].get<std::string>();
    const bool has_chat = j.contains("chat"), has_prompt = j.contains("prompt");
    if (has_chat == has_prompt) return bad("give exactly one of 'chat' or 'prompt'");
    if (has_chat) {
      if (!j["chat"].is_string()) return bad("'chat' must be a string (the user turn)");
      DMOE_ASSIGN_OR_RETURN(s.prompt_text,
                            model::RenderChat({{"user", j["chat"].get<std::string>()}}, true));
    } else if (j["prompt"].is_string()) {
      s.prompt_text = j["prompt"].get<std::string>();
    } else if (j["prompt"].is_array()) {
      std::vector<model::ChatMessage> messages;
      for (const Json& m : j["prompt"]) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
            !m.contains("content") || !m["content"].is_string()) {
          return bad("'prompt' messages must be {\"role\": ..., \"content\": ...}");
        }
        messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
      DMOE_ASSIGN_OR_RETURN(s.prompt_text, model::RenderChat(messages, true));
    } else {
      return bad("'prompt' must be a string or a list of messages");
    }
    if (s.prompt_text.empty()) return bad("empty prompt");
    if (limit > 0 && per_task[s.task] >= limit) continue;
    ++per_task[s.task];
    samples.push_back(std::move(s));
  }
  if (samples.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no tasks"));
  return samples;
}

absl::Status RunEval(const EvalFlags& f) {
  if (f.batch < 1) return absl::InvalidArgumentError("--batch must be >= 1");
  DMOE_ASSIGN_OR_RETURN(std::vector<EvalSample> samples, ReadTasks(f.tasks_file, f.limit));
  DMOE_ASSIGN_OR_RETURN(auto tokenizer, model::Tokenizer::Load(f.model_dir));
  DMOE_ASSIGN_OR_RETURN(model::DecodeTokenIds ids,
                        model::ResolveDecodeTokenIds(*tokenizer, std::nullopt, std::nullopt));
  DMOE_ASSIGN_OR_RETURN(auto engine, engine::Engine::Create({.model_dir = f.model_dir,
                                                             .kernels = f.kernels,
                                                             .num_threads = f.threads}));
  const model::ModelConfig& config = engine->config();

  DMOE_ASSIGN_OR_RETURN(engine::DecodingRequest asked, ToDecodingRequest(f.decoding));
  const engine::GenerationParams params = engine::BuildGenerationParams(
      asked, engine::ModelDecodingDefaults::For(config, ids.mask_id, ids.stop_ids));
  const bool diffusion = params.mode == engine::DecodeMode::kDiffusion;

  std::unique_ptr<std::ofstream> samples_out;
  if (!f.samples_file.empty()) {
    samples_out = std::make_unique<std::ofstream>(f.samples_file);
    if (!*samples_out) return absl::InternalError(absl::StrCat(f.samples_file, ": cannot create"));
  }

  std::map<std::string, TaskStats> stats;
  std::vector<std::string> task_order;
  ProgressLine progress("samples", static_cast<int64_t>(samples.size()), StderrIsTerminal());
  int64_t done = 0, done_correct = 0;
  for (size_t begin = 0; begin < samples.size(); begin += f.batch) {
    progress.Update(done, done > 0 ? absl::StrFormat("accuracy %.1f%%", 100.0 * done_correct / done)
                                   : std::string());
    const size_t end = std::min(samples.size(), begin + static_cast<size_t>(f.batch));
    std::vector<engine::GenerationRequest> requests;
    for (size_t i = begin; i < end; ++i) {
      requests.push_back({tokenizer->Encode(samples[i].prompt_text), params});
    }
    const auto t0 = std::chrono::steady_clock::now();
    DMOE_ASSIGN_OR_RETURN(auto results, engine->Generate(requests));
    const double batch_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t batch_tokens = 0;
    for (const auto& r : results) batch_tokens += static_cast<int64_t>(r.ids.size());
    for (size_t i = begin; i < end; ++i) {
      const EvalSample& s = samples[i];
      const engine::GenerationResult& r = results[i - begin];
      const std::string text = tokenizer->Decode(r.ids, /*skip_special_tokens=*/true);
      const bool correct = ExactMatch(text, s.answer);
      if (!stats.count(s.task)) task_order.push_back(s.task);
      TaskStats& t = stats[s.task];
      t.n += 1;
      t.correct += correct;
      ++done;
      done_correct += correct;
      t.tokens += static_cast<int64_t>(r.ids.size());
      t.forwards += r.forwards;
      t.edits += r.edits;
      t.remasks += r.remasks;
      // A batch's wall time is shared out by generated tokens.
      t.seconds += batch_tokens > 0 ? batch_seconds * r.ids.size() / batch_tokens
                                    : batch_seconds / (end - begin);
      if (samples_out) {
        *samples_out << Json{{"line", s.line},
                             {"task", s.task},
                             {"answer", s.answer},
                             {"output", SanitizeUtf8(text)},
                             {"correct", correct},
                             {"tokens", r.ids.size()},
                             {"forwards", r.forwards},
                             {"edits", r.edits},
                             {"finish_reason", engine::FinishReasonName(r.finish_reason)}}
                            .dump()
                     << "\n";
      }
    }
  }
  progress.Finish();
  std::sort(task_order.begin(), task_order.end());
  TaskStats all;
  double mean_accuracy = 0;
  for (const std::string& name : task_order) {
    all.Add(stats[name]);
    mean_accuracy += stats[name].accuracy() / task_order.size();
  }

  if (f.json) {
    Json tasks = Json::object();
    for (const std::string& name : task_order) tasks[name] = stats[name].ToJson();
    Json out = {{"model", f.model_dir},
                {"tasks_file", f.tasks_file},
                {"mode", diffusion ? "diffusion" : "ar"},
                {"threshold", diffusion ? Json(params.threshold) : Json(nullptr)},
                {"block_length", diffusion ? Json(params.block_length) : Json(nullptr)},
                {"edit_threshold",
                 params.editing() ? Json(*params.edit_threshold) : Json(nullptr)},
                {"max_post_steps", params.editing() ? Json(params.max_post_steps) : Json(nullptr)},
                {"max_new_tokens", params.max_new_tokens},
                {"batch", f.batch},
                {"tasks", tasks},
                {"overall", all.ToJson()},
                {"accuracy", all.accuracy()},
                {"mean_task_accuracy", mean_accuracy},
                {"tokens_per_forward", all.tpf()},
                {"forwards", all.forwards},
                {"edits", all.edits},
                {"remasks", all.remasks},
                {"tokens_per_second", all.tps()}};
    std::cout << out.dump() << std::endl;
    return absl::OkStatus();
  }
  std::cout << "model " << f.model_dir << " ("
            << (diffusion ? absl::StrFormat("diffusion, threshold %.2f, block %d", params.threshold,
                                            params.block_length)
                          : std::string("ar"))
            << (params.editing() ? absl::StrFormat(", edit threshold %.2f, max post steps %d",
                                                   *params.edit_threshold, params.max_post_steps)
                                 : std::string())
            << ", max_new_tokens " << params.max_new_tokens << ", batch " << f.batch << ")\n";
  std::cout << absl::StrFormat("%-12s %6s %9s %6s %9s %9s %9s", "task", "n", "accuracy", "TPF",
                               "forwards", "tokens", "tokens/s")
            << (params.editing() ? absl::StrFormat(" %7s %7s", "edits", "remasks") : "") << "\n";
  auto row = [&params](const std::string& name, const TaskStats& t) {
    std::cout << absl::StrFormat("%-12s %6d %8.1f%% %6.2f %9d %9d %9.1f", name, t.n,
                                 100.0 * t.accuracy(), t.tpf(), t.forwards, t.tokens, t.tps())
              << (params.editing() ? absl::StrFormat(" %7d %7d", t.edits, t.remasks) : "")
              << "\n";
  };
  for (const std::string& name : task_order) row(name, stats[name]);
  row("all", all);
  return absl::OkStatus();
}

}  // namespace

void RegisterEvalCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Exact-match accuracy, tokens per forward and tokens/s on a JSONL task file");
  cmd->add_option("--model", flags->model_dir, "Checkpoint directory (HF layout)")->required();
  cmd->add_option("--tasks", flags->tasks_file,
                  "JSONL: {\"task\", \"chat\" | \"prompt\", \"answer\"} per line")
      ->required();
  AddDecodingFlags(cmd, &flags->decoding);
  cmd->add_option("--limit", flags->limit, "At most this many samples per task (0 = all)")
      ->capture_default_str();
  cmd->add_option("--batch", flags->batch, "Requests per engine step batch (1 = one at a time)")
      ->capture_default_str();
  cmd->add_option("--samples", flags->samples_file, "Write one JSON line per sample here");
  cmd->add_flag("--json", flags->json, "Print one JSON object instead of the table");
  cmd->add_option("--kernels", flags->kernels, "cpu (fast) or reference (naive)")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "Compute threads (0 = all cores)");
  cmd->callback([flags, exit_code] {
    absl::Status status = RunEval(*flags);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
