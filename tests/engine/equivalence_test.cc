// The KV-cached, batched engine against the literal reference generate() (MODEL-SPEC.md §4.3,
// full recompute, no cache) on tiny random checkpoints: same ids for prompts below, at and
// above a block boundary, at thresholds 0.0 / 0.5 / 0.95, in BF16 and F32; batched requests
// equal solo ones; the AR path equals a causal full-recompute loop.
#include <cmath>
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
