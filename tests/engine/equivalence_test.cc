// The KV-cached, batched engine against the literal reference generate() (MODEL-SPEC.md §4.3,
// full recompute, no cache) on tiny random checkpoints: same ids for prompts below, at and
// above a block boundary, at thresholds 0.0 / 0.5 / 0.95, in BF16 and F32; batched requests
// equal solo ones; the AR path equals a causal full-recompute loop. LLaDA2.1 token editing
// against the literal LLaDA2.1 generate() (reference_generate_editing.cc) the same way.
#include <cmath>
#include <iostream>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/reference_generate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/cpu/reference_kernels.h"
#include "tests/testing/nmse.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::engine {
namespace {

constexpr int32_t kMask = 4000;
constexpr int32_t kStop = 4001;

// The tiny decoding checkpoint (seed 7) in `dtype`, of `kind`, in a temporary directory.
std::unique_ptr<dmoe_testing::TinyCheckpointDir> MakeCheckpoint(DType dtype,
                                                                model::ModelKind kind) {
  tools::RandomCheckpointSpec spec = dmoe_testing::DecodingSpec(/*seed=*/7);
  spec.dtype = dtype;
  spec.kind = kind;
  return std::make_unique<dmoe_testing::TinyCheckpointDir>(spec);
}

std::vector<int32_t> Prompt(int64_t length, int32_t salt) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < length; ++i) p.push_back(static_cast<int32_t>((i * 37 + salt * 101) % 3900));
  return p;
}

GenerationParams Params(float threshold, int64_t block, int64_t max_new) {
  GenerationParams p;
  p.threshold = threshold;
  p.block_length = block;
  p.max_new_tokens = max_new;
  p.mask_id = kMask;
  p.stop_ids = {kStop};
  return p;
}

class EquivalenceTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    checkpoint_ = MakeCheckpoint(GetParam(), model::ModelKind::kBlockDiffusion);
    ASSERT_TRUE(checkpoint_->ok()) << checkpoint_->status();
    auto engine = Engine::Create({.model_dir = checkpoint_->dir(), .num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    experts_ = std::make_unique<model::LocalExpertExecutor>(engine_->model().weights(),
                                                            engine_->kernels());
  }

  std::vector<int32_t> Cached(const std::vector<int32_t>& prompt, const GenerationParams& p,
                              int64_t* forwards = nullptr) {
    auto r = engine_->Generate({{prompt, p}});
    EXPECT_TRUE(r.ok()) << r.status();
    if (forwards) *forwards = (*r)[0].forwards;
    return (*r)[0].ids;
  }
  ReferenceResult Reference(const std::vector<int32_t>& prompt, const GenerationParams& p) {
    auto r = ReferenceGenerate(engine_->model(), engine_->kernels(), *experts_, prompt, p);
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }
  ReferenceResult ReferenceEditing(const std::vector<int32_t>& prompt, const GenerationParams& p) {
    auto r = ReferenceGenerateEditing(engine_->model(), engine_->kernels(), *experts_, prompt, p);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : ReferenceResult{};
  }

  std::unique_ptr<dmoe_testing::TinyCheckpointDir> checkpoint_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<model::LocalExpertExecutor> experts_;
};

TEST_P(EquivalenceTest, KvCachedDecodingEqualsFullRecomputeReference) {
  int64_t multi_commit_forwards = 0;
  for (float threshold : {0.0f, 0.5f, 0.95f}) {
    for (int64_t prompt_length : {5, 31, 32, 33, 45}) {
      GenerationParams p = Params(threshold, 32, 40);
      std::vector<int32_t> prompt = Prompt(prompt_length, prompt_length);
      int64_t forwards = 0;
      std::vector<int32_t> cached = Cached(prompt, p, &forwards);
      ReferenceResult ref = Reference(prompt, p);
      EXPECT_EQ(cached, ref.ids) << "threshold " << threshold << " prompt " << prompt_length;
      EXPECT_EQ(forwards, ref.forwards) << "threshold " << threshold << " prompt " << prompt_length;
      if (forwards < static_cast<int64_t>(cached.size())) ++multi_commit_forwards;
    }
  }
  // Not vacuous: some generations committed several tokens per forward.
  EXPECT_GT(multi_commit_forwards, 0);
}

TEST_P(EquivalenceTest, SmallBlocksShortGenerationsAndSampling) {
  for (int64_t block : {1, 4, 8}) {
    GenerationParams p = Params(0.5f, block, 11);
    std::vector<int32_t> prompt = Prompt(10, 3);
    EXPECT_EQ(Cached(prompt, p), Reference(prompt, p).ids) << "block " << block;
  }
  GenerationParams sampled = Params(0.5f, 8, 20);
  sampled.sampling = {.temperature = 0.8f, .top_k = 50, .top_p = 0.9f, .seed = 1234};
  std::vector<int32_t> prompt = Prompt(12, 4);
  EXPECT_EQ(Cached(prompt, sampled), Reference(prompt, sampled).ids);
  GenerationParams short_gen = Params(0.95f, 32, 3);  // reference schedule: 11 tokens per step
  EXPECT_EQ(Cached(prompt, short_gen), Reference(prompt, short_gen).ids);
}

TEST_P(EquivalenceTest, SixteenConcurrentRequestsEqualSoloRuns) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    GenerationParams p = Params(i % 3 == 0 ? 0.0f : i % 3 == 1 ? 0.5f : 0.95f, i % 2 ? 32 : 8,
                                20 + i);
    requests.push_back({Prompt(3 + 5 * i, i), p});
  }
  auto batched = engine_->Generate(requests);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ((*batched)[i].ids, Cached(requests[i].prompt, requests[i].params)) << "request " << i;
  }
  EXPECT_EQ(engine_->kv_pool().pages_in_use(), 0);  // every request freed its KV
}

// Logprobs are the log of each token's probability when it was committed: the engine's (from
// the sampler's confidence, KV-cached) equal a direct log-softmax of the reference's logits.
TEST_P(EquivalenceTest, LogprobsEqualDirectLogSoftmaxAtCommit) {
  for (float threshold : {0.0f, 0.95f}) {
    GenerationParams p = Params(threshold, 8, 20);
    std::vector<int32_t> prompt = Prompt(13, 5);
    auto r = engine_->Generate({{prompt, p}});
    ASSERT_TRUE(r.ok()) << r.status();
    const GenerationResult& got = (*r)[0];
    ReferenceResult ref = Reference(prompt, p);
    ASSERT_EQ(got.ids, ref.ids);
    ASSERT_EQ(got.logprobs.size(), got.ids.size());
    for (size_t i = 0; i < got.ids.size(); ++i) {
      EXPECT_TRUE(std::isfinite(got.logprobs[i])) << i;
      EXPECT_LE(got.logprobs[i], 0.0f) << i;
      EXPECT_NEAR(got.logprobs[i], ref.logprobs[i], 1e-4) << "threshold " << threshold << " id " << i;
    }
  }
}

// --- LLaDA2.1 token editing against the literal LLaDA2.1 generate() ---

GenerationParams EditParams(float threshold, float edit_threshold, int64_t post, int64_t block,
                            int64_t max_new) {
  GenerationParams p = Params(threshold, block, max_new);
  p.edit_threshold = edit_threshold;
  p.max_post_steps = post;
  return p;
}

// Ids, forward counts (the KV-cached engine spends exactly the reference's forwards: a finished
// block's K/V ride on the next block's first forward), edit counts and logprobs.
TEST_P(EquivalenceTest, EditingEqualsLlada21Reference) {
  int64_t edits = 0, remasks = 0, edited_cases = 0, cases = 0;
  for (float threshold : {0.0f, 0.5f, 0.95f}) {
    for (float edit_threshold : {1.0f, 0.5f, 0.0f}) {
      for (int64_t post : {0, 16}) {
        for (int64_t prompt_length : {5, 32, 33, 45}) {
          GenerationParams p = EditParams(threshold, edit_threshold, post, 32, 40);
          std::vector<int32_t> prompt = Prompt(prompt_length, prompt_length + 7);
          auto r = engine_->Generate({{prompt, p}});
          ASSERT_TRUE(r.ok()) << r.status();
          const GenerationResult& got = (*r)[0];
          ReferenceResult ref = ReferenceEditing(prompt, p);
          const std::string where = ::testing::PrintToString(std::vector<double>{
              threshold, edit_threshold, static_cast<double>(post),
              static_cast<double>(prompt_length)});
          EXPECT_EQ(got.ids, ref.ids) << where;
          EXPECT_EQ(got.forwards, ref.forwards) << where;
          EXPECT_EQ(got.edits, ref.edits) << where;
          EXPECT_EQ(got.remasks, ref.remasks) << where;
          ASSERT_EQ(got.logprobs.size(), ref.logprobs.size()) << where;
          for (size_t i = 0; i < got.logprobs.size(); ++i) {
            EXPECT_NEAR(got.logprobs[i], ref.logprobs[i], 1e-4) << where << " id " << i;
          }
          if (edit_threshold >= 1.0f) {
            EXPECT_EQ(got.edits, 0) << where;
          }
          edits += got.edits;
          remasks += got.remasks;
          edited_cases += got.edits > 0;
          ++cases;
        }
      }
    }
  }
  // Not vacuous: edits happened in many cases (re-masks are rare on a random checkpoint).
  EXPECT_GT(edited_cases, cases / 4);
  std::cout << "editing: " << edits << " edits (" << remasks << " re-masks) in " << edited_cases
            << " of " << cases << " generations\n";
}

// Editing off (edit threshold 1: no rewrite can pass `> 1`) and no post steps: LLaDA2.1's loop
// is LLaDA2.0's (with steps = B, so one token per fallback), bit-identical ids and forwards.
TEST_P(EquivalenceTest, EditingOffWithoutPostStepsIsLlada20) {
  for (float threshold : {0.0f, 0.5f, 0.95f}) {
    for (int64_t block : {8, 32}) {
      for (int64_t prompt_length : {5, 32, 45}) {
        std::vector<int32_t> prompt = Prompt(prompt_length, prompt_length);
        GenerationParams v20 = Params(threshold, block, 40);
        GenerationParams v21 = EditParams(threshold, 1.0f, 0, block, 40);
        int64_t f20 = 0, f21 = 0;
        std::vector<int32_t> ids20 = Cached(prompt, v20, &f20);
        std::vector<int32_t> ids21 = Cached(prompt, v21, &f21);
        ReferenceResult ref20 = Reference(prompt, v20);
        ReferenceResult ref21 = ReferenceEditing(prompt, v21);
        EXPECT_EQ(ids21, ids20) << threshold << " " << block << " " << prompt_length;
        EXPECT_EQ(f21, f20);
        EXPECT_EQ(ref21.ids, ref20.ids);
        EXPECT_EQ(ref21.forwards, ref20.forwards);
        EXPECT_EQ(ids20, ref20.ids);
      }
    }
  }
}

TEST_P(EquivalenceTest, EditingWithSmallBlocksAndSampling) {
  for (int64_t block : {1, 4, 8}) {
    GenerationParams p = EditParams(0.5f, 0.1f, 3, block, 11);
    std::vector<int32_t> prompt = Prompt(10, 3);
    int64_t forwards = 0;
    std::vector<int32_t> ids = Cached(prompt, p, &forwards);
    ReferenceResult ref = ReferenceEditing(prompt, p);
    EXPECT_EQ(ids, ref.ids) << "block " << block;
    EXPECT_EQ(forwards, ref.forwards) << "block " << block;
  }
  GenerationParams sampled = EditParams(0.5f, 0.3f, 16, 8, 20);
  sampled.sampling = {.temperature = 0.8f, .top_k = 50, .top_p = 0.9f, .seed = 1234};
  std::vector<int32_t> prompt = Prompt(12, 4);
  ReferenceResult ref = ReferenceEditing(prompt, sampled);
  int64_t forwards = 0;
  EXPECT_EQ(Cached(prompt, sampled, &forwards), ref.ids);
  EXPECT_EQ(forwards, ref.forwards);
}

TEST_P(EquivalenceTest, EditingRequestsBatchedWithOthersEqualSoloRuns) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 12; ++i) {
    GenerationParams p = i % 3 == 0 ? Params(0.5f, 8, 20 + i)
                                    : EditParams(i % 2 ? 0.5f : 0.95f, i % 4 == 1 ? 0.0f : 0.3f,
                                                 i % 5 == 0 ? 0 : 16, i % 2 ? 32 : 8, 20 + i);
    requests.push_back({Prompt(3 + 5 * i, i), p});
  }
  auto batched = engine_->Generate(requests);
  ASSERT_TRUE(batched.ok()) << batched.status();
  int64_t edits = 0;
  for (int i = 0; i < 12; ++i) {
    auto solo = engine_->Generate({requests[i]});
    ASSERT_TRUE(solo.ok()) << solo.status();
    EXPECT_EQ((*batched)[i].ids, (*solo)[0].ids) << "request " << i;
    EXPECT_EQ((*batched)[i].forwards, (*solo)[0].forwards) << "request " << i;
    EXPECT_EQ((*batched)[i].edits, (*solo)[0].edits) << "request " << i;
    edits += (*batched)[i].edits;
  }
  EXPECT_GT(edits, 0);
  EXPECT_EQ(engine_->kv_pool().pages_in_use(), 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EquivalenceTest, ::testing::Values(DType::kBF16, DType::kF32),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(AutoregressiveTest, KvCachedArEqualsCausalFullRecompute) {
  auto checkpoint = MakeCheckpoint(DType::kF32, model::ModelKind::kAutoregressive);
  ASSERT_TRUE(checkpoint->ok()) << checkpoint->status();
  auto engine = Engine::Create({.model_dir = checkpoint->dir(), .num_threads = 2});
  ASSERT_TRUE(engine.ok()) << engine.status();
  model::LocalExpertExecutor experts((*engine)->model().weights(), (*engine)->kernels());
  GenerationParams p = Params(0.9f, 32, 12);
  p.mode = DecodeMode::kAutoregressive;
  std::vector<int32_t> prompt = Prompt(7, 1);
  auto cached = (*engine)->Generate({{prompt, p}});
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ((*cached)[0].forwards, static_cast<int64_t>((*cached)[0].ids.size()));

  // Full recompute: causal forward over everything, the last position predicts the next token.
  std::vector<int32_t> x = prompt, generated;
  const int64_t vocab = (*engine)->config().vocab_size;
  while (static_cast<int64_t>(generated.size()) < p.max_new_tokens) {
    std::vector<model::ForwardSegment> seg(1);
    seg[0] = {.tokens = x, .attention_block = 1, .logits_from = static_cast<int64_t>(x.size()) - 1};
    auto logits = (*engine)->model().Forward(seg, (*engine)->kernels(), experts);
    ASSERT_TRUE(logits.ok());
    Proposal next = SampleRows((*logits)[0].data(), 1, vocab, {}, 0);
    x.push_back(next.tokens[0]);
    generated.push_back(next.tokens[0]);
    if (next.tokens[0] == kStop) break;
  }
  EXPECT_EQ((*cached)[0].ids, generated);
}

TEST(BackendParityTest, FastBackendLogitsMatchReferenceBackend) {
  auto checkpoint = MakeCheckpoint(DType::kBF16, model::ModelKind::kBlockDiffusion);
  ASSERT_TRUE(checkpoint->ok()) << checkpoint->status();
  auto fast = Engine::Create({.model_dir = checkpoint->dir(), .kernels = "cpu", .num_threads = 2});
  auto ref = Engine::Create({.model_dir = checkpoint->dir(), .kernels = "reference"});
  ASSERT_TRUE(fast.ok() && ref.ok());
  std::vector<int32_t> tokens = Prompt(40, 9);
  auto run = [&](Engine& e) {
    model::LocalExpertExecutor experts(e.model().weights(), e.kernels());
    std::vector<model::ForwardSegment> seg(1);
    seg[0] = {.tokens = tokens, .attention_block = 32};
    auto logits = e.model().Forward(seg, e.kernels(), experts);
    EXPECT_TRUE(logits.ok());
    return (*logits)[0];
  };
  EXPECT_LT(dmoe_testing::Nmse(run(**fast), run(**ref)), 1e-9);
}

}  // namespace
}  // namespace dmoe::engine
