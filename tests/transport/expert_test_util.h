// Helpers shared by the expert data-plane tests (tests/transport, tests/expert_service): a
// random tiny checkpoint with full and attention-only weights, and a KV-cached generation
// loop / batched forward that run through any model::ExpertExecutor.
#ifndef DMOE_TESTS_TRANSPORT_EXPERT_TEST_UTIL_H_
#define DMOE_TESTS_TRANSPORT_EXPERT_TEST_UTIL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sequence.h"
#include "model/checkpoint.h"
#include "model/expert_executor.h"
#include "model/kernels.h"
#include "model/model.h"
#include "model/weights.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::expert_testing {

// Mask / stop ids used by Params (inside the tiny vocab of 4096).
inline constexpr int32_t kMask = 4000;
inline constexpr int32_t kStop = 4001;

// A random `tiny` checkpoint (16 experts, top-4, 3 layers with layers 1-2 MoE) in a fresh
// temporary directory, removed on destruction. Thread-compatible.
class TinyModel {
 public:
  static absl::StatusOr<std::unique_ptr<TinyModel>> Create(uint64_t seed = 7);

  const std::string& dir() const { return tmp_.path(); }
  const model::ModelConfig& config() const { return checkpoint_->config(); }
  // Every weight: the LocalExpertExecutor baseline.
  const model::Model& full() const { return *full_; }
  const model::ModelWeights& full_weights() const { return full_weights_; }
  // No routed experts, as an attention replica loads it.
  const model::Model& attention() const { return *attention_; }

 private:
  TinyModel() = default;
  dmoe_testing::TempDir tmp_;  // first: removed after everything that maps its files
  std::unique_ptr<model::Checkpoint> checkpoint_;
  model::ModelWeights full_weights_;
  model::ModelWeights attention_weights_;
  std::unique_ptr<model::Model> full_;
  std::unique_ptr<model::Model> attention_;
};

// Deterministic prompt of `length` ids below 3900.
std::vector<int32_t> Prompt(int64_t length, int32_t salt);
// Diffusion parameters with kMask / kStop.
engine::GenerationParams Params(float threshold, int64_t block, int64_t max_new);

// Runs every prompt to completion (KV-cached block diffusion, all live sequences batched into
// each forward, as engine::Engine does) with `experts`. `on_forward(i)` runs after forward i.
absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    const model::Model& model, model::Kernels& kernels, model::ExpertExecutor& experts,
    const std::vector<std::vector<int32_t>>& prompts, const engine::GenerationParams& params,
    const std::function<void(int64_t forward)>& on_forward = nullptr);

// Logits of one uncached forward of all `sequences` batched (block-causal, block 32).
absl::StatusOr<std::vector<std::vector<float>>> ForwardLogits(
    const model::Model& model, model::Kernels& kernels, model::ExpertExecutor& experts,
    const std::vector<std::vector<int32_t>>& sequences);

// Same size and same bits (memcmp), not just equal values.
bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace dmoe::expert_testing

#endif  // DMOE_TESTS_TRANSPORT_EXPERT_TEST_UTIL_H_
