// The attention replica's GPU forward (`dmoe-attention --device cuda`): CudaModel with the host
// expert hook (CudaModelOptions::host_experts, routed experts on a LocalExpertExecutor over the
// host weights, device weights uploaded from a load_experts = false load) gives the same greedy
// proposals as the in-device expert path and as the CPU model on the tiny F32 checkpoint,
// uncached and over KV-cached block steps; AttentionEngine{device = "cuda"} steps like the CPU
// engine and refuses sampling. Skips without a GPU.
#include <cmath>
#include <memory>
#include <vector>

#include "attention_service/attention_engine.h"
#include "engine/sampling.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/cpu/fast_kernels.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_worker.h"
#include "model/expert_executor.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/weights.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::gpu {
namespace {

constexpr int32_t kMask = 4000;

std::vector<int32_t> Tokens(int64_t n, int32_t salt) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>((i * 37 + salt * 101) % 3900));
  return t;
}

// Counts the hook's calls.
class CountingExecutor : public model::ExpertExecutor {
 public:
  explicit CountingExecutor(model::ExpertExecutor& inner) : inner_(inner) {}
  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t n, int64_t h,
                          const model::Routing& routing, float* out) override {
    ++calls;
    return inner_.RunExperts(layer, hidden, n, h, routing, out);
  }
  int64_t calls = 0;

 private:
  model::ExpertExecutor& inner_;
};

class CudaAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    tools::RandomCheckpointSpec spec = dmoe_testing::DecodingSpec(/*seed=*/11);
    spec.dtype = DType::kF32;
    tiny_ = std::make_unique<dmoe_testing::TinyCheckpointDir>(spec);
    ASSERT_TRUE(tiny_->ok()) << tiny_->status();
    auto ckpt = model::Checkpoint::Open(tiny_->dir());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    checkpoint_ = *std::move(ckpt);
    auto full = model::LoadModelWeights(*checkpoint_, {});
    ASSERT_TRUE(full.ok()) << full.status();
    full_weights_ = *std::move(full);
    auto attention = model::LoadModelWeights(*checkpoint_,
                                             {.load_dense = true, .load_experts = false});
    ASSERT_TRUE(attention.ok()) << attention.status();
    attention_weights_ = *std::move(attention);
    model_ = std::make_unique<model::Model>(checkpoint_->config(), full_weights_);
    attention_model_ = std::make_unique<model::Model>(checkpoint_->config(), attention_weights_);
    kernels_ = std::make_unique<model::FastKernels>(model::FastKernelsOptions{.num_threads = 2});
    local_ = std::make_unique<model::LocalExpertExecutor>(full_weights_, *kernels_);
    counting_ = std::make_unique<CountingExecutor>(*local_);
    cpu_pool_ = std::make_unique<model::KvCachePool>(model_->KvOptions(32, 64));

    auto worker = DeviceWorker::Create({});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    const model::ModelConfig& c = checkpoint_->config();
    absl::Status s = worker_->Run([&](DeviceContext& ctx) -> absl::Status {
      auto w = CudaWeights::Upload(c, full_weights_);
      if (!w.ok()) return w.status();
      device_weights_ = *std::move(w);
      auto nw = CudaWeights::Upload(c, attention_weights_);
      if (!nw.ok()) return nw.status();
      attention_device_weights_ = *std::move(nw);
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        const CudaLayer& layer = attention_device_weights_->layer(l);
        if (layer.expert_gate != nullptr || layer.expert_up != nullptr ||
            layer.expert_down != nullptr || layer.experts_held != 0) {
          return absl::InternalError("load_experts = false upload holds expert pointers");
        }
      }
      // Without the hook, a model over expert-less weights is refused.
      auto refused = CudaModel::Create(*attention_device_weights_, nullptr, {}, ctx);
      if (refused.status().code() != absl::StatusCode::kFailedPrecondition) {
        return absl::InternalError("CudaModel without experts and without hook was accepted");
      }
      for (int i = 0; i < 2; ++i) {
        auto pool = CudaKvPool::Create(
            {.num_layers = c.num_hidden_layers, .kv_width = c.kv_width(), .page_tokens = 8}, 256);
        if (!pool.ok()) return pool.status();
        pools_[i] = *std::move(pool);
      }
      auto in_device = CudaModel::Create(*device_weights_, pools_[0].get(), {.max_rows = 256}, ctx);
      if (!in_device.ok()) return in_device.status();
      in_device_ = *std::move(in_device);
      auto hooked = CudaModel::Create(*attention_device_weights_, pools_[1].get(),
                                      {.max_rows = 256, .host_experts = counting_.get()}, ctx);
      if (!hooked.ok()) return hooked.status();
      hooked_ = *std::move(hooked);
      return absl::OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s;
  }

  void TearDown() override {
    if (worker_ == nullptr) return;
    absl::Status s = worker_->Run([&](DeviceContext&) {
      sequences_.clear();
      hooked_.reset();
      in_device_.reset();
      for (auto& p : pools_) p.reset();
      attention_device_weights_.reset();
      device_weights_.reset();
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    worker_.reset();
  }

  struct Sequence {
    std::unique_ptr<model::KvSequence> cpu;
    CudaKvSequence* in_device = nullptr;
    CudaKvSequence* hooked = nullptr;
  };
  Sequence NewSequence() {
    Sequence s;
    s.cpu = std::make_unique<model::KvSequence>(cpu_pool_.get());
    absl::Status st = worker_->Run([&](DeviceContext&) {
      sequences_.push_back(std::make_unique<CudaKvSequence>(pools_[0].get()));
      s.in_device = sequences_.back().get();
      sequences_.push_back(std::make_unique<CudaKvSequence>(pools_[1].get()));
      s.hooked = sequences_.back().get();
      return absl::OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st;
    return s;
  }

  struct Segment {
    Sequence* seq = nullptr;
    std::vector<int32_t> tokens;
    int64_t persist = 0;
    int64_t block = 32;
    int64_t logits_from = 0;
  };

  // Runs the batch on the CPU, on the in-device path and on the hook path; all three must
  // propose the same ids, with confidences within 1e-3 (relative).
  void RunAll(const std::vector<Segment>& segments) {
    std::vector<model::ForwardSegment> cpu;
    std::vector<CudaForwardSegment> in_device, hooked;
    for (const Segment& s : segments) {
      const int64_t start = s.seq != nullptr ? s.seq->cpu->length() : 0;
      cpu.push_back({.kv = s.seq != nullptr ? s.seq->cpu.get() : nullptr, .start = start,
                     .tokens = s.tokens, .persist = s.persist, .attention_block = s.block,
                     .logits_from = s.logits_from});
      in_device.push_back({.kv = s.seq != nullptr ? s.seq->in_device : nullptr, .start = start,
                           .tokens = s.tokens, .persist = s.persist, .attention_block = s.block,
                           .logits_from = s.logits_from});
      hooked.push_back(in_device.back());
      hooked.back().kv = s.seq != nullptr ? s.seq->hooked : nullptr;
    }
    auto logits = model_->Forward(cpu, *kernels_, *local_);
    ASSERT_TRUE(logits.ok()) << logits.status();
    absl::StatusOr<std::vector<CudaProposals>> a, b;
    const int64_t calls_before = counting_->calls;
    absl::Status s = worker_->Run([&](DeviceContext&) -> absl::Status {
      a = in_device_->Forward(in_device);
      if (!a.ok()) return a.status();
      b = hooked_->Forward(hooked);
      return b.status();
    });
    ASSERT_TRUE(s.ok()) << s;
    const model::ModelConfig& c = checkpoint_->config();
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.IsMoeLayer(l);
    EXPECT_EQ(counting_->calls - calls_before, moe_layers);
    const int64_t vocab = c.vocab_size;
    for (size_t i = 0; i < segments.size(); ++i) {
      const std::vector<float>& l = (*logits)[i];
      const int64_t rows = static_cast<int64_t>(l.size()) / vocab;
      const engine::Proposal want = engine::SampleRows(l.data(), rows, vocab, {}, 0);
      ASSERT_EQ(static_cast<int64_t>((*a)[i].ids.size()), rows);
      ASSERT_EQ(static_cast<int64_t>((*b)[i].ids.size()), rows);
      for (int64_t r = 0; r < rows; ++r) {
        EXPECT_EQ((*b)[i].ids[r], (*a)[i].ids[r]) << "segment " << i << " row " << r;
        EXPECT_EQ((*b)[i].ids[r], want.tokens[r]) << "segment " << i << " row " << r;
        EXPECT_NEAR((*b)[i].confidence[r], want.confidence[r], 1e-3 * want.confidence[r]);
        EXPECT_NEAR((*b)[i].confidence[r], (*a)[i].confidence[r], 1e-3 * (*a)[i].confidence[r]);
      }
    }
  }

  std::unique_ptr<dmoe_testing::TinyCheckpointDir> tiny_;
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights full_weights_, attention_weights_;
  std::unique_ptr<model::Model> model_, attention_model_;
  std::unique_ptr<model::FastKernels> kernels_;
  std::unique_ptr<model::LocalExpertExecutor> local_;
  std::unique_ptr<CountingExecutor> counting_;
  std::unique_ptr<model::KvCachePool> cpu_pool_;
  std::unique_ptr<DeviceWorker> worker_;
  // Device thread only.
  std::unique_ptr<CudaWeights> device_weights_, attention_device_weights_;
  std::unique_ptr<CudaKvPool> pools_[2];
  std::unique_ptr<CudaModel> in_device_, hooked_;
  std::vector<std::unique_ptr<CudaKvSequence>> sequences_;
};

TEST_F(CudaAttentionTest, HookMatchesInDeviceExpertsAndCpuUncached) {
  RunAll({{.tokens = Tokens(1, 1)},
          {.tokens = Tokens(5, 2)},
          {.tokens = Tokens(32, 3)},
          {.tokens = Tokens(45, 4), .block = 8},
          {.tokens = Tokens(9, 5), .block = 1, .logits_from = 4}});
}

TEST_F(CudaAttentionTest, HookMatchesInDeviceExpertsAndCpuOverCachedBlockSteps) {
  Sequence a = NewSequence(), b = NewSequence();
  std::vector<int32_t> a_prompt = Tokens(40, 6), b_prompt = Tokens(64, 7);
  RunAll({{.seq = &a, .tokens = a_prompt, .persist = 32, .logits_from = 32},
          {.seq = &b, .tokens = b_prompt, .persist = 64, .logits_from = 63}});
  std::vector<int32_t> a_block(a_prompt.begin() + 32, a_prompt.end());
  a_block.resize(32, kMask);
  RunAll({{.seq = &a, .tokens = a_block}, {.seq = &b, .tokens = std::vector<int32_t>(32, kMask)}});
  RunAll({{.seq = &a, .tokens = Tokens(32, 8), .persist = 32}});
  RunAll({{.seq = &a, .tokens = std::vector<int32_t>(32, kMask)}});
}

TEST_F(CudaAttentionTest, EngineOnCudaStepsLikeTheCpuEngine) {
  auto experts = [&](model::Kernels& k) -> std::unique_ptr<model::ExpertExecutor> {
    return std::make_unique<model::LocalExpertExecutor>(full_weights_, k);
  };
  auto cpu = attention::AttentionEngine::Create({.num_threads = 2, .kv_max_pages = 64},
                                                *attention_model_, experts);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto gpu = attention::AttentionEngine::Create(
      {.num_threads = 2, .kv_max_pages = 64, .micro_batches = 2, .device = "cuda"},
      *attention_model_, experts);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ((*gpu)->options().micro_batches, 1);

  auto plan = [](int64_t start, std::vector<int32_t> tokens, int64_t persist, int64_t from) {
    engine::StepPlan p;
    p.start = start;
    p.tokens = std::move(tokens);
    p.persist = persist;
    p.attention_block = 32;
    p.logits_from = from;
    return p;
  };
  std::vector<std::vector<attention::SegmentRequest>> steps = {
      {{.sequence_id = "a", .plan = plan(0, Tokens(40, 1), 32, 32)},
       {.sequence_id = "b", .plan = plan(0, Tokens(64, 2), 64, 63)}},
      {{.sequence_id = "a", .plan = plan(32, std::vector<int32_t>(32, kMask), 0, 0)},
       {.sequence_id = "b", .plan = plan(64, std::vector<int32_t>(32, kMask), 32, 0)}},
  };
  for (const auto& step : steps) {
    attention::StepTimings timings;
    auto want = (*cpu)->Step(step);
    auto got = (*gpu)->Step(step, &timings);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want->size());
    for (size_t i = 0; i < want->size(); ++i) {
      EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << "segment " << i;
    }
    EXPECT_GT(timings.expert_seconds, 0);
  }
  EXPECT_EQ((*gpu)->Info().sequences, 2);
  EXPECT_GT((*gpu)->Info().kv_pages_used, 0);
  // A plan that does not start at the cached length is refused as on the CPU.
  auto stale = (*gpu)->Step({{.sequence_id = "a", .plan = plan(0, Tokens(4, 3), 0, 0)}});
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  // A plan that samples is sampled on the host over the returned logits, as on the CPU.
  engine::StepPlan sampled = plan(0, Tokens(6, 3), 6, 2);
  sampled.sampling = {.temperature = 0.7f, .top_k = 40, .seed = 12};
  sampled.stream = 5;
  auto sampled_gpu = (*gpu)->Step({{.sequence_id = "c", .plan = sampled}});
  auto sampled_cpu = (*cpu)->Step({{.sequence_id = "c", .plan = sampled}});
  ASSERT_TRUE(sampled_gpu.ok()) << sampled_gpu.status();
  ASSERT_TRUE(sampled_cpu.ok()) << sampled_cpu.status();
  EXPECT_EQ((*sampled_gpu)[0].tokens, (*sampled_cpu)[0].tokens);
  for (size_t r = 0; r < (*sampled_cpu)[0].confidence.size(); ++r) {
    EXPECT_NEAR((*sampled_gpu)[0].confidence[r], (*sampled_cpu)[0].confidence[r], 1e-3);
  }
  EXPECT_EQ((*gpu)->Release({"a", "b", "c", "zz"}), 3);
  EXPECT_EQ((*gpu)->Info().kv_pages_used, 0);
}

}  // namespace
}  // namespace dmoe::gpu
