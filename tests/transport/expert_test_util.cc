#include "tests/transport/expert_test_util.h"

#include <cstring>

#include "common/status_macros.h"
#include "engine/engine.h"
#include "model/kv_cache.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::expert_testing {

absl::StatusOr<std::unique_ptr<TinyModel>> TinyModel::Create(uint64_t seed) {
  auto tiny = std::unique_ptr<TinyModel>(new TinyModel());
  // Confidences spread over (0, 1): several tokens commit per forward.
  DMOE_RETURN_IF_ERROR(
      dmoe_testing::WriteTinyCheckpoint(tiny->dir(), dmoe_testing::DecodingSpec(seed)));
  DMOE_ASSIGN_OR_RETURN(tiny->checkpoint_, model::Checkpoint::Open(tiny->dir()));
  DMOE_ASSIGN_OR_RETURN(tiny->full_weights_, model::LoadModelWeights(*tiny->checkpoint_, {}));
  DMOE_ASSIGN_OR_RETURN(tiny->attention_weights_,
                        model::LoadModelWeights(*tiny->checkpoint_, {.load_experts = false}));
  tiny->full_ = std::make_unique<model::Model>(tiny->config(), tiny->full_weights_);
  tiny->attention_ = std::make_unique<model::Model>(tiny->config(), tiny->attention_weights_);
  return tiny;
}

std::vector<int32_t> Prompt(int64_t length, int32_t salt) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < length; ++i) {
    p.push_back(static_cast<int32_t>((i * 37 + salt * 101) % 3900));
  }
  return p;
}

engine::GenerationParams Params(float threshold, int64_t block, int64_t max_new) {
  engine::GenerationParams p;
  p.threshold = threshold;
  p.block_length = block;
  p.max_new_tokens = max_new;
  p.mask_id = kMask;
  p.stop_ids = {kStop};
  return p;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    const model::Model& model, model::Kernels& kernels, model::ExpertExecutor& experts,
    const std::vector<std::vector<int32_t>>& prompts, const engine::GenerationParams& params,
    const std::function<void(int64_t forward)>& on_forward) {
  model::KvCachePool pool(model.KvOptions(/*page_tokens=*/32, /*max_pages=*/256));
  std::vector<engine::Sequence> sequences;
  std::vector<std::unique_ptr<model::KvSequence>> caches;
  for (const std::vector<int32_t>& prompt : prompts) {
    DMOE_ASSIGN_OR_RETURN(engine::Sequence s, engine::Sequence::Create(prompt, params));
    sequences.push_back(std::move(s));
    caches.push_back(std::make_unique<model::KvSequence>(&pool));
  }
  for (int64_t forward = 0;; ++forward) {
    std::vector<size_t> live;
    std::vector<engine::StepPlan> plans;
    std::vector<model::KvSequence*> kv;
    for (size_t i = 0; i < sequences.size(); ++i) {
      if (sequences[i].done()) continue;
      live.push_back(i);
      plans.push_back(sequences[i].NextStep());
      kv.push_back(caches[i].get());
    }
    if (live.empty()) break;
    DMOE_ASSIGN_OR_RETURN(auto proposals, engine::ExecutePlans(model, kernels, experts, plans, kv));
    for (size_t j = 0; j < live.size(); ++j) {
      DMOE_RETURN_IF_ERROR(sequences[live[j]].Apply(plans[j], proposals[j]));
    }
    if (on_forward) on_forward(forward);
  }
  std::vector<std::vector<int32_t>> ids;
  for (const engine::Sequence& s : sequences) ids.push_back(s.FinalTokens());
  return ids;
}

absl::StatusOr<std::vector<std::vector<float>>> ForwardLogits(
    const model::Model& model, model::Kernels& kernels, model::ExpertExecutor& experts,
    const std::vector<std::vector<int32_t>>& sequences) {
  std::vector<model::ForwardSegment> segments(sequences.size());
  for (size_t i = 0; i < sequences.size(); ++i) {
    segments[i] = {.tokens = sequences[i], .attention_block = 32};
  }
  return model.Forward(segments, kernels, experts);
}

bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace dmoe::expert_testing
