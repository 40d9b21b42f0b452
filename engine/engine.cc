#include "engine/engine.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/cpu/make_kernels.h"

namespace dmoe::engine {
namespace {
double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}
}  // namespace

absl::StatusOr<std::vector<Proposal>> ExecutePlans(const model::Model& model,
                                                   model::Kernels& kernels,
                                                   model::ExpertExecutor& experts,
                                                   const std::vector<StepPlan>& plans,
                                                   const std::vector<model::KvSequence*>& caches,
                                                   model::ForwardStats* stats) {
  std::vector<model::ForwardSegment> segments(plans.size());
  for (size_t i = 0; i < plans.size(); ++i) {
    segments[i] = {.kv = caches[i],
                   .start = plans[i].start,
                   .tokens = plans[i].tokens,
                   .persist = plans[i].persist,
                   .attention_block = plans[i].attention_block,
                   .logits_from = plans[i].logits_from};
  }
  DMOE_ASSIGN_OR_RETURN(auto logits, model.Forward(segments, kernels, experts, stats));
  const int64_t vocab = model.config().vocab_size;
  std::vector<Proposal> proposals(plans.size());
  for (size_t i = 0; i < plans.size(); ++i) {
    const int64_t rows = static_cast<int64_t>(logits[i].size()) / vocab;
    proposals[i] = SampleRows(logits[i].data(), rows, vocab, plans[i].sampling, plans[i].stream);
  }
  return proposals;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->options_ = options;
  DMOE_ASSIGN_OR_RETURN(engine->checkpoint_, model::Checkpoint::Open(options.model_dir));
  DMOE_ASSIGN_OR_RETURN(engine->weights_, model::LoadModelWeights(*engine->checkpoint_, {}));
  engine->model_ = std::make_unique<model::Model>(engine->checkpoint_->config(), engine->weights_);
  DMOE_ASSIGN_OR_RETURN(engine->kernels_, model::MakeKernels(options.kernels, options.num_threads));
  engine->experts_ =
      std::make_unique<model::LocalExpertExecutor>(engine->weights_, *engine->kernels_);
  engine->kv_pool_ = std::make_unique<model::KvCachePool>(
      engine->model_->KvOptions(options.kv_page_tokens, options.kv_max_pages));
  return engine;
}

absl::StatusOr<std::vector<GenerationResult>> Engine::Generate(
    const std::vector<GenerationRequest>& requests, const StepObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<Sequence> sequences;
  std::vector<std::unique_ptr<model::KvSequence>> caches;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto status = requests[i].params.Validate(config().vocab_size);
    if (status.ok()) {
      for (int32_t t : requests[i].prompt) {
        if (t < 0 || t >= config().vocab_size) {
          status = absl::InvalidArgumentError(
              absl::StrCat("prompt token id ", t, " is outside [0, ", config().vocab_size, ")"));
          break;
        }
      }
    }
    if (status.ok() && requests[i].params.mode == DecodeMode::kDiffusion &&
        config().kind == model::ModelKind::kAutoregressive) {
      DMOE_LOG(WARNING) << "diffusion decoding on an autoregressive checkpoint ("
                        << config().model_type << ")";
    }
    auto sequence = status.ok() ? Sequence::Create(requests[i].prompt, requests[i].params)
                                : absl::StatusOr<Sequence>(status);
    if (!sequence.ok()) {
      return absl::Status(sequence.status().code(),
                          absl::StrCat("request ", i, ": ", sequence.status().message()));
    }
    sequences.push_back(*std::move(sequence));
    caches.push_back(std::make_unique<model::KvSequence>(kv_pool_.get()));
  }

  std::vector<GenerationResult> results(requests.size());
  for (;;) {
    std::vector<size_t> live;
    for (size_t i = 0; i < sequences.size(); ++i) {
      if (!sequences[i].done()) live.push_back(i);
      if (live.size() >= static_cast<size_t>(options_.max_batch_sequences)) break;
    }
    if (live.empty()) break;
    std::vector<StepPlan> plans;
    std::vector<model::KvSequence*> kv;
    for (size_t i : live) {
      plans.push_back(sequences[i].NextStep());
      kv.push_back(caches[i].get());
    }
    DMOE_ASSIGN_OR_RETURN(auto proposals, ExecutePlans(*model_, *kernels_, *experts_, plans, kv));
    for (size_t j = 0; j < live.size(); ++j) {
      Sequence& s = sequences[live[j]];
      DMOE_RETURN_IF_ERROR(s.Apply(plans[j], proposals[j]));
      GenerationResult& r = results[live[j]];
      if (r.first_block_seconds == 0 && !s.FinalTokens().empty()) r.first_block_seconds = Seconds(start);
      if (observer) observer(live[j], s);
      if (s.done()) {
        r.seconds = Seconds(start);
        caches[live[j]]->Clear();  // free KV as soon as a request ends
      }
    }
  }
  for (size_t i = 0; i < sequences.size(); ++i) {
    results[i].ids = sequences[i].FinalTokens();
    results[i].logprobs = sequences[i].FinalLogprobs();
    results[i].finish_reason = sequences[i].finish_reason();
    results[i].forwards = sequences[i].forwards();
    results[i].edits = sequences[i].edits();
    results[i].remasks = sequences[i].remasks();
  }
  return results;
}

}  // namespace dmoe::engine
