// The whole device forward (CudaModel) against the CPU backend (Model::Forward with FastKernels
// and LocalExpertExecutor, greedy proposals as engine::SampleRows computes them) on tiny random
// checkpoints: in F32 the top-1 ids are equal and confidences agree; in BF16 (where the GPU
// rounds GEMM inputs to BF16) ids may differ only where the CPU's top two logits are within
// rounding, and the test reports how often that happens. Uncached batches and KV-cached block
// steps (paged device cache) are both covered. Q8 runs the q8 copy of the F32 checkpoint
// (dmoe quantize): the GPU dequantizes it to F32 on upload, so it is held to the F32 bounds.
// Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <vector>

#include "engine/sampling.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/cpu/fast_kernels.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_worker.h"
#include "model/expert_executor.h"
#include "model/kv_cache.h"
#include "model/quantize.h"
#include "model/model.h"
#include "model/weights.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::gpu {
namespace {

constexpr int32_t kMask = 4000;

std::vector<int32_t> Tokens(int64_t n, int32_t salt) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>((i * 37 + salt * 101) % 3900));
  return t;
}

// Outcome of comparing one forward's proposals.
struct Comparison {
  int64_t rows = 0;
  int64_t equal_ids = 0;
  int64_t near_ties = 0;      // different ids, CPU logits of both within `tie_margin`
  int64_t real_mismatch = 0;  // different ids with a larger margin
  double max_conf_rel_error = 0;
};

class CudaForwardTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    tools::RandomCheckpointSpec spec = dmoe_testing::DecodingSpec(/*seed=*/7);
    spec.dtype = GetParam() == DType::kI8 ? DType::kF32 : GetParam();
    tiny_ = std::make_unique<dmoe_testing::TinyCheckpointDir>(spec);
    ASSERT_TRUE(tiny_->ok()) << tiny_->status();
    std::string dir = tiny_->dir();
    if (GetParam() == DType::kI8) {
      dir = q8_dir_.Join("q8");
      absl::Status q = model::QuantizeCheckpoint({.in_dir = tiny_->dir(), .out_dir = dir});
      ASSERT_TRUE(q.ok()) << q;
    }
    auto ckpt = model::Checkpoint::Open(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    checkpoint_ = *std::move(ckpt);
    auto weights = model::LoadModelWeights(*checkpoint_, {});
    ASSERT_TRUE(weights.ok()) << weights.status();
    host_weights_ = *std::move(weights);
    model_ = std::make_unique<model::Model>(checkpoint_->config(), host_weights_);
    kernels_ = std::make_unique<model::FastKernels>(model::FastKernelsOptions{.num_threads = 2});
    experts_ = std::make_unique<model::LocalExpertExecutor>(host_weights_, *kernels_);
    cpu_pool_ = std::make_unique<model::KvCachePool>(model_->KvOptions(32, 64));

    auto worker = DeviceWorker::Create({});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    const model::ModelConfig& c = checkpoint_->config();
    absl::Status s = worker_->Run([&](DeviceContext& ctx) -> absl::Status {
      auto w = CudaWeights::Upload(c, host_weights_);
      if (!w.ok()) return w.status();
      gpu_weights_ = *std::move(w);
      auto pool = CudaKvPool::Create(
          {.num_layers = c.num_hidden_layers, .kv_width = c.kv_width(), .page_tokens = 8}, 256);
      if (!pool.ok()) return pool.status();
      gpu_pool_ = *std::move(pool);
      auto m = CudaModel::Create(*gpu_weights_, gpu_pool_.get(),
                                 {.max_rows = 256, .lm_head_chunk_rows = 48}, ctx);
      if (!m.ok()) return m.status();
      gpu_model_ = *std::move(m);
      return absl::OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s;
  }

  void TearDown() override {
    if (worker_ == nullptr) return;
    // Device objects are destroyed on the device thread.
    absl::Status s = worker_->Run([&](DeviceContext&) {
      gpu_sequences_.clear();
      gpu_model_.reset();
      gpu_pool_.reset();
      gpu_weights_.reset();
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    worker_.reset();
  }

  // A sequence with a KV cache on both sides.
  struct Sequence {
    std::unique_ptr<model::KvSequence> cpu;
    CudaKvSequence* gpu = nullptr;
  };
  Sequence NewSequence() {
    Sequence s;
    s.cpu = std::make_unique<model::KvSequence>(cpu_pool_.get());
    absl::Status st = worker_->Run([&](DeviceContext&) {
      gpu_sequences_.push_back(std::make_unique<CudaKvSequence>(gpu_pool_.get()));
      s.gpu = gpu_sequences_.back().get();
      return absl::OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st;
    return s;
  }

  struct Segment {
    Sequence* seq = nullptr;  // null: uncached
    std::vector<int32_t> tokens;
    int64_t persist = 0;
    int64_t block = 32;
    int64_t logits_from = 0;
  };

  // Runs the same batch on both backends and compares the greedy proposals.
  Comparison RunBoth(const std::vector<Segment>& segments, float tie_margin) {
    Comparison cmp;
    std::vector<model::ForwardSegment> cpu;
    std::vector<CudaForwardSegment> gpu;
    for (const Segment& s : segments) {
      const int64_t start = s.seq != nullptr ? s.seq->cpu->length() : 0;
      cpu.push_back({.kv = s.seq != nullptr ? s.seq->cpu.get() : nullptr,
                     .start = start,
                     .tokens = s.tokens,
                     .persist = s.persist,
                     .attention_block = s.block,
                     .logits_from = s.logits_from});
      gpu.push_back({.kv = s.seq != nullptr ? s.seq->gpu : nullptr,
                     .start = start,
                     .tokens = s.tokens,
                     .persist = s.persist,
                     .attention_block = s.block,
                     .logits_from = s.logits_from});
    }
    auto logits = model_->Forward(cpu, *kernels_, *experts_);
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) return cmp;
    absl::StatusOr<std::vector<CudaProposals>> proposals;
    absl::Status s = worker_->Run([&](DeviceContext&) {
      proposals = gpu_model_->Forward(gpu);
      return proposals.status();
    });
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return cmp;
    const int64_t vocab = checkpoint_->config().vocab_size;
    for (size_t i = 0; i < segments.size(); ++i) {
      const std::vector<float>& l = (*logits)[i];
      const int64_t rows = static_cast<int64_t>(l.size()) / vocab;
      const engine::Proposal expected = engine::SampleRows(l.data(), rows, vocab, {}, 0);
      EXPECT_EQ(static_cast<int64_t>((*proposals)[i].ids.size()), rows);
      if (static_cast<int64_t>((*proposals)[i].ids.size()) != rows) continue;
      for (int64_t r = 0; r < rows; ++r) {
        ++cmp.rows;
        const int32_t got = (*proposals)[i].ids[r], want = expected.tokens[r];
        const float* row = &l[r * vocab];
        if (got == want) {
          ++cmp.equal_ids;
          const double rel = std::fabs((*proposals)[i].confidence[r] - expected.confidence[r]) /
                             expected.confidence[r];
          cmp.max_conf_rel_error = std::max(cmp.max_conf_rel_error, rel);
        } else if (got >= 0 && got < vocab && row[want] - row[got] < tie_margin) {
          ++cmp.near_ties;
        } else {
          ++cmp.real_mismatch;
        }
      }
    }
    return cmp;
  }

  void Check(const Comparison& c, const char* what) {
    const bool f32 = GetParam() != DType::kBF16;  // q8 runs as F32 on the GPU
    std::cout << "[" << DTypeName(GetParam()) << " " << what << "] rows " << c.rows
              << ", equal ids " << c.equal_ids << ", near ties " << c.near_ties
              << ", real mismatches " << c.real_mismatch << ", max confidence rel. error "
              << c.max_conf_rel_error << "\n";
    RecordProperty(std::string(what) + "_near_ties", static_cast<int>(c.near_ties));
    EXPECT_GT(c.rows, 0);
    EXPECT_EQ(c.real_mismatch, 0);
    if (f32) {
      EXPECT_EQ(c.equal_ids, c.rows);
      EXPECT_LE(c.max_conf_rel_error, 1e-3);
    } else {
      EXPECT_GE(c.equal_ids * 10, c.rows * 9);  // ties within BF16 rounding stay rare
      EXPECT_LE(c.max_conf_rel_error, 0.25);
    }
  }

  float TieMargin() const { return GetParam() == DType::kBF16 ? 0.1f : 1e-4f; }

  std::unique_ptr<dmoe_testing::TinyCheckpointDir> tiny_;
  dmoe_testing::TempDir q8_dir_;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights host_weights_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<model::FastKernels> kernels_;
  std::unique_ptr<model::LocalExpertExecutor> experts_;
  std::unique_ptr<model::KvCachePool> cpu_pool_;
  std::unique_ptr<DeviceWorker> worker_;
  // Device thread only.
  std::unique_ptr<CudaWeights> gpu_weights_;
  std::unique_ptr<CudaKvPool> gpu_pool_;
  std::unique_ptr<CudaModel> gpu_model_;
  std::vector<std::unique_ptr<CudaKvSequence>> gpu_sequences_;
};

TEST_P(CudaForwardTest, UncachedBatchHasTheCpuTopOneIds) {
  // One row; a partial block; a full block; several blocks (block-causal across them); a
  // causal segment (block 1).
  std::vector<Segment> segments = {{.tokens = Tokens(1, 1)},
                                   {.tokens = Tokens(5, 2)},
                                   {.tokens = Tokens(32, 3)},
                                   {.tokens = Tokens(45, 4), .block = 8},
                                   {.tokens = Tokens(9, 5), .block = 1, .logits_from = 4}};
  Check(RunBoth(segments, TieMargin()), "uncached");
}

TEST_P(CudaForwardTest, KvCachedBlockStepsHaveTheCpuTopOneIds) {
  Sequence a = NewSequence(), b = NewSequence();
  // Prefill: A's first full block is persisted, its tail (8 tokens) is not; B persists 2 blocks.
  std::vector<int32_t> a_prompt = Tokens(40, 6), b_prompt = Tokens(64, 7);
  Check(RunBoth({{.seq = &a, .tokens = a_prompt, .persist = 32, .logits_from = 32},
                 {.seq = &b, .tokens = b_prompt, .persist = 64, .logits_from = 63}},
                TieMargin()),
        "prefill");
  // Denoising step of the next block of each: prompt tail + masks over the cached prefix.
  std::vector<int32_t> a_block(a_prompt.begin() + 32, a_prompt.end());
  a_block.resize(32, kMask);
  std::vector<int32_t> b_block(32, kMask);
  Check(RunBoth({{.seq = &a, .tokens = a_block}, {.seq = &b, .tokens = b_block}}, TieMargin()),
        "block_step");
  // Persist the block and decode the one after it.
  Check(RunBoth({{.seq = &a, .tokens = Tokens(32, 8), .persist = 32}}, TieMargin()), "persist");
  Check(RunBoth({{.seq = &a, .tokens = std::vector<int32_t>(32, kMask)}}, TieMargin()),
        "next_block");
}

TEST_P(CudaForwardTest, RejectsMalformedSegments) {
  absl::Status s = worker_->Run([&](DeviceContext&) {
    std::vector<CudaForwardSegment> bad = {{.start = 3, .tokens = {1, 2}}};
    return gpu_model_->Forward(bad).status();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = worker_->Run([&](DeviceContext&) {
    std::vector<CudaForwardSegment> bad = {{.tokens = {1, 99999}}};
    return gpu_model_->Forward(bad).status();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaForwardTest, ::testing::Values(DType::kF32, DType::kBF16, DType::kI8),
                         [](const auto& info) {
                           return info.param == DType::kI8 ? std::string("Q8")
                                                           : std::string(DTypeName(info.param));
                         });

}  // namespace
}  // namespace dmoe::gpu
