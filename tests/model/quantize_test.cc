// q8 checkpoints (model/quantize.h, docs/quantization.md): the row quantizer's bounds, which
// tensors are quantized, a checkpoint written by QuantizeCheckpoint and loaded back (every
// q8 matrix within half a step of its source, the router and norms unchanged), an engine that
// generates from it, and the refusals.
#include "model/quantize.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::model {
namespace {

using dmoe_testing::IsOk;
using dmoe_testing::StatusIs;

TEST(QuantizeTest, RowsAreWithinHalfAStepAndZeroBlocksStayZero) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> v(96);
  for (float& x : v) x = normal(rng);
  v[5] = 0.3f;                                           // an outlier sets block 0's scale
  for (int i = 32; i < 64; ++i) v[i] = 0.0f;             // block 1: all zero
  std::vector<int8_t> q(96);
  std::vector<float> scales(3);
  QuantizeRowQ8(v.data(), 96, q.data(), scales.data());
  EXPECT_FLOAT_EQ(scales[0], 0.3f / 127.0f);
  EXPECT_EQ(q[5], 127);
  EXPECT_EQ(scales[1], 0.0f);
  for (int b = 0; b < 3; ++b) {
    for (int i = b * 32; i < (b + 1) * 32; ++i) {
      const float back = static_cast<float>(q[i]) * scales[b];
      EXPECT_LE(std::fabs(back - v[i]), scales[b] * 0.5f * (1 + 1e-5f) + 1e-12f) << i;
      EXPECT_GE(q[i], -127);
    }
  }
}

TEST(QuantizeTest, OnlyTheLargeMatricesAreQuantized) {
  EXPECT_TRUE(QuantizesToQ8("model.layers.3.mlp.experts.7.down_proj.weight", 512, 128));
  EXPECT_TRUE(QuantizesToQ8("model.layers.0.attention.query_key_value.weight", 1024, 512));
  EXPECT_TRUE(QuantizesToQ8("model.word_embeddings.weight", 8192, 512));
  EXPECT_TRUE(QuantizesToQ8("lm_head.weight", 8192, 512));
  EXPECT_FALSE(QuantizesToQ8("model.layers.3.mlp.gate.weight", 256, 512));  // the router
  EXPECT_FALSE(QuantizesToQ8("model.layers.3.mlp.experts.7.down_proj.weight", 512, 100));
  EXPECT_FALSE(QuantizesToQ8("model.norm.weight", 1, 512));
}

class QuantizeCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(tiny_.ok()) << tiny_.status(); }
  dmoe_testing::TinyCheckpointDir tiny_;
  dmoe_testing::TempDir out_;
};

TEST_F(QuantizeCheckpointTest, LoadsBackWithinHalfAStepOfTheSource) {
  const std::string q8_dir = out_.Join("q8");
  ASSERT_THAT(QuantizeCheckpoint({.in_dir = tiny_.dir(), .out_dir = q8_dir}), IsOk());
  DMOE_ASSERT_OK_AND_ASSIGN(auto source, Checkpoint::Open(tiny_.dir()));
  DMOE_ASSERT_OK_AND_ASSIGN(auto q8, Checkpoint::Open(q8_dir));
  DMOE_ASSERT_OK_AND_ASSIGN(ModelWeights a, LoadModelWeights(*source, {}));
  DMOE_ASSERT_OK_AND_ASSIGN(ModelWeights b, LoadModelWeights(*q8, {}));
  auto expect_close = [](const WeightMatrix& src, const WeightMatrix& q) {
    ASSERT_EQ(q.dtype, DType::kI8);
    ASSERT_NE(q.scales, nullptr);
    std::vector<float> x(src.cols), y(src.cols);
    for (int64_t r = 0; r < src.rows; ++r) {
      src.RowToF32(r, x.data());
      q.RowToF32(r, y.data());
      for (int64_t c = 0; c < src.cols; ++c) {
        const float step = q.scales[r * (src.cols / kQ8Block) + c / kQ8Block];
        ASSERT_LE(std::fabs(x[c] - y[c]), step * 0.5f * (1 + 1e-5f) + 1e-12f)
            << "row " << r << " col " << c;
      }
    }
  };
  expect_close(a.embed, b.embed);
  expect_close(a.lm_head, b.lm_head);
  const int moe = static_cast<int>(source->config().first_k_dense_replace);
  expect_close(a.layers[0].qkv, b.layers[0].qkv);
  expect_close(a.layers[0].dense.down, b.layers[0].dense.down);
  expect_close(a.layers[moe].experts[1].gate, b.layers[moe].experts[1].gate);
  expect_close(a.layers[moe].shared.up, b.layers[moe].shared.up);
  // The router and norms are the source's, bit for bit.
  EXPECT_EQ(b.layers[moe].router.dtype, a.layers[moe].router.dtype);
  EXPECT_EQ(std::memcmp(a.layers[moe].router.data, b.layers[moe].router.data,
                        a.layers[moe].router.nbytes()),
            0);
  EXPECT_EQ(a.final_norm, b.final_norm);
  EXPECT_EQ(a.layers[moe].expert_bias, b.layers[moe].expert_bias);
  // About half the bytes of a BF16 source (1 byte + 4/32 per value).
  EXPECT_LT(WeightBytes(b), WeightBytes(a));
  std::ifstream config(q8_dir + "/config.json");
  auto json = nlohmann::json::parse(config);
  EXPECT_EQ(json["quantization_config"]["quant_method"], "dmoe_q8");
  EXPECT_EQ(json["quantization_config"]["block_size"], 32);
}

TEST_F(QuantizeCheckpointTest, RefusesWhatItCannotDo) {
  EXPECT_THAT(QuantizeCheckpoint({.in_dir = tiny_.dir(), .out_dir = out_.Join("a"),
                                  .format = "q4"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(QuantizeCheckpoint({.in_dir = tiny_.dir(), .out_dir = tiny_.dir()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  const std::string q8_dir = out_.Join("q8");
  ASSERT_THAT(QuantizeCheckpoint({.in_dir = tiny_.dir(), .out_dir = q8_dir}), IsOk());
  // Not empty any more; and a q8 checkpoint is not quantized twice.
  EXPECT_THAT(QuantizeCheckpoint({.in_dir = tiny_.dir(), .out_dir = q8_dir}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(QuantizeCheckpoint({.in_dir = q8_dir, .out_dir = out_.Join("twice")}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(QuantizeCheckpoint({.in_dir = out_.Join("absent"), .out_dir = out_.Join("b")}),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(QuantizeCheckpointTest, AMissingScaleTensorIsAClearError) {
  const std::string q8_dir = out_.Join("q8");
  ASSERT_THAT(QuantizeCheckpoint({.in_dir = tiny_.dir(), .out_dir = q8_dir}), IsOk());
  // Rewrite the file without one scale tensor.
  DMOE_ASSERT_OK_AND_ASSIGN(auto q8, Checkpoint::Open(q8_dir));
  std::vector<TensorToWrite> kept;
  const std::string dropped = std::string("lm_head.weight") + kQ8ScaleSuffix;
  for (const std::string& name : q8->TensorNames()) {
    if (name == dropped) continue;
    DMOE_ASSERT_OK_AND_ASSIGN(TensorView v, q8->Get(name));
    kept.push_back({name, v.dtype, v.shape,
                    std::string(static_cast<const char*>(v.data), v.nbytes)});
  }
  q8.reset();
  ASSERT_THAT(WriteSafetensors(q8_dir + "/model.safetensors", kept), IsOk());
  DMOE_ASSERT_OK_AND_ASSIGN(auto broken, Checkpoint::Open(q8_dir));
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(*broken, {});
  EXPECT_THAT(weights.status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_NE(weights.status().message().find(dropped), std::string::npos) << weights.status();
}

}  // namespace
}  // namespace dmoe::model
