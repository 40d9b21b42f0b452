#include "model/checkpoint.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/resident_memory.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::model {
namespace {

using ::dmoe_testing::ReadFileOrDie;
using ::dmoe_testing::StatusIs;
using ::dmoe_testing::TinyCheckpointDir;
using ::dmoe_testing::TinySpec;
using ::dmoe_testing::WriteFileOrDie;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kEmbedding[] = "model.word_embeddings.weight";

tools::RandomCheckpointSpec ShardedSpec(int shards) {
  tools::RandomCheckpointSpec spec = TinySpec();
  spec.num_shards = shards;
  return spec;
}

std::string Shard(int i, int n) {
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", i, n);
  return name;
}

TEST(CheckpointTest, OpensSingleFile) {
  TinyCheckpointDir tiny;
  ASSERT_TRUE(tiny.ok());
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, Checkpoint::Open(tiny.dir()));
  EXPECT_EQ(ckpt->dir(), tiny.dir());
  EXPECT_EQ(ckpt->config().hidden_size, 64);
  EXPECT_EQ(ckpt->config().num_hidden_layers, 3);

  const std::string file = tiny.dir() + "/model.safetensors";
  EXPECT_TRUE(ckpt->Has(kEmbedding));
  EXPECT_FALSE(ckpt->Has("model.nonexistent"));
  EXPECT_EQ(ckpt->FileOf(kEmbedding), file);
  EXPECT_EQ(ckpt->FileOf("model.nonexistent"), "");

  DMOE_ASSERT_OK_AND_ASSIGN(TensorView emb, ckpt->Get(kEmbedding));
  EXPECT_EQ(emb.name, kEmbedding);
  EXPECT_EQ(emb.dtype, DType::kBF16);
  EXPECT_EQ(emb.shape, (std::vector<int64_t>{4096, 64}));
  EXPECT_EQ(emb.nbytes, 4096u * 64 * 2);
  DMOE_EXPECT_OK(ckpt->GetWithShape(kEmbedding, {4096, 64}));

  EXPECT_THAT(ckpt->Get("model.norm.weight.bogus"),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr(file + ": missing tensor 'model.norm.weight.bogus'")));
  EXPECT_THAT(ckpt->GetWithShape(kEmbedding, {64, 4096}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(file + ": tensor 'model.word_embeddings.weight' has shape "
                                        "[4096, 64], expected [64, 4096]")));

  uint64_t bytes = 0;
  for (const std::string& name : ckpt->TensorNames()) {
    DMOE_ASSERT_OK_AND_ASSIGN(TensorView v, ckpt->Get(name));
    bytes += v.nbytes;
  }
  EXPECT_EQ(ckpt->TotalTensorBytes(), bytes);
  EXPECT_GT(std::filesystem::file_size(file), bytes);
}

TEST(CheckpointTest, ShardedMatchesSingleFile) {
  TinyCheckpointDir single;
  TinyCheckpointDir sharded(ShardedSpec(3));
  ASSERT_TRUE(single.ok() && sharded.ok());
  EXPECT_FALSE(std::filesystem::exists(sharded.dir() + "/model.safetensors"));
  DMOE_ASSERT_OK_AND_ASSIGN(auto a, Checkpoint::Open(single.dir()));
  DMOE_ASSERT_OK_AND_ASSIGN(auto b, Checkpoint::Open(sharded.dir()));
  ASSERT_EQ(a->TensorNames(), b->TensorNames());
  EXPECT_EQ(a->TotalTensorBytes(), b->TotalTensorBytes());
  std::set<std::string> files;
  for (const std::string& name : a->TensorNames()) {
    SCOPED_TRACE(name);
    DMOE_ASSERT_OK_AND_ASSIGN(TensorView va, a->Get(name));
    DMOE_ASSERT_OK_AND_ASSIGN(TensorView vb, b->Get(name));
    EXPECT_EQ(va.dtype, vb.dtype);
    EXPECT_EQ(va.shape, vb.shape);
    ASSERT_EQ(va.nbytes, vb.nbytes);
    EXPECT_EQ(std::memcmp(va.data, vb.data, va.nbytes), 0);
    files.insert(b->FileOf(name));
  }
  EXPECT_EQ(files, (std::set<std::string>{sharded.dir() + "/" + Shard(1, 3),
                                          sharded.dir() + "/" + Shard(2, 3),
                                          sharded.dir() + "/" + Shard(3, 3)}));
  // Missing tensors are reported against the index.
  EXPECT_THAT(b->Get("nope"),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr(sharded.dir() + "/model.safetensors.index.json: missing tensor "
                                                 "'nope'")));
}

TEST(CheckpointTest, MissingConfig) {
  TinyCheckpointDir tiny;
  std::filesystem::remove(tiny.dir() + "/config.json");
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(tiny.dir() + " has no config.json")));
}

TEST(CheckpointTest, MissingWeights) {
  TinyCheckpointDir tiny;
  std::filesystem::remove(tiny.dir() + "/model.safetensors");
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr(tiny.dir()), HasSubstr("model.safetensors.index.json"))));
}

TEST(CheckpointTest, CorruptWeightsNameTheFile) {
  TinyCheckpointDir tiny;
  const std::string file = tiny.dir() + "/model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 10);
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(file), HasSubstr("truncated"))));
}

TEST(CheckpointTest, IndexReferencesMissingShard) {
  TinyCheckpointDir tiny(ShardedSpec(3));
  std::filesystem::remove(tiny.dir() + "/" + Shard(2, 3));
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(HasSubstr(tiny.dir() + "/model.safetensors.index.json"),
                             HasSubstr("shard '" + Shard(2, 3) + "'"),
                             HasSubstr("holding tensor 'model."), HasSubstr("not found"))));
}

TEST(CheckpointTest, IndexReferencesTensorTheShardLacks) {
  TinyCheckpointDir tiny(ShardedSpec(2));
  const std::string index_path = tiny.dir() + "/model.safetensors.index.json";
  Json index = Json::parse(ReadFileOrDie(index_path));
  index["weight_map"]["model.layers.0.mlp.extra.weight"] = Shard(2, 2);
  WriteFileOrDie(index_path, index.dump(2));
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(tiny.dir() + "/" + Shard(2, 2) +
                                       ": missing tensor 'model.layers.0.mlp.extra.weight'"),
                             HasSubstr("model.safetensors.index.json"))));
}

TEST(CheckpointTest, DuplicateTensorAcrossShards) {
  TinyCheckpointDir tiny(ShardedSpec(2));
  DMOE_ASSERT_OK_AND_ASSIGN(auto first, SafetensorsFile::Open(tiny.dir() + "/" + Shard(1, 2)));
  DMOE_ASSERT_OK_AND_ASSIGN(auto second, SafetensorsFile::Open(tiny.dir() + "/" + Shard(2, 2)));
  ASSERT_EQ(first->tensors().count(kEmbedding), 1u);
  // Rewrite shard 2 with a copy of the embedding added.
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, v] : second->tensors()) {
    tensors.push_back({name, v.dtype, v.shape,
                       std::string(static_cast<const char*>(v.data), v.nbytes)});
  }
  const TensorView& emb = first->tensors().at(kEmbedding);
  tensors.push_back({kEmbedding, emb.dtype, emb.shape,
                     std::string(static_cast<const char*>(emb.data), emb.nbytes)});
  second.reset();
  DMOE_ASSERT_OK(WriteSafetensors(tiny.dir() + "/" + Shard(2, 2), tensors));
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(Shard(1, 2)), HasSubstr(Shard(2, 2)),
                             HasSubstr("tensor 'model.word_embeddings.weight' is also stored"))));
}

TEST(CheckpointTest, MalformedIndex) {
  TinyCheckpointDir tiny(ShardedSpec(2));
  const std::string index_path = tiny.dir() + "/model.safetensors.index.json";
  WriteFileOrDie(index_path, "{\"weight_map\": ");
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(index_path), HasSubstr("malformed JSON"))));
  WriteFileOrDie(index_path, R"({"metadata": {}})");
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(index_path), HasSubstr("'weight_map'"))));
  WriteFileOrDie(index_path, R"({"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}})");
  EXPECT_THAT(Checkpoint::Open(tiny.dir()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(index_path), HasSubstr("'lm_head.weight'"),
                             HasSubstr("../elsewhere.safetensors"))));
}

// Open maps the files without reading them: resident memory grows only with what is touched.
TEST(CheckpointTest, MappedNotCopied) {
  tools::RandomCheckpointSpec spec = TinySpec();
  spec.dtype = DType::kF32;
  spec.vocab_size = 32768;
  spec.hidden_size = 256;
  spec.head_dim = 64;
  TinyCheckpointDir big(spec);  // ~70 MB: embeddings + lm_head are 32 MiB each
  ASSERT_TRUE(big.ok());

  const int64_t before_open = dmoe_testing::ResidentBytes();
  ASSERT_GT(before_open, 0);
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, Checkpoint::Open(big.dir()));
  ASSERT_GT(ckpt->TotalTensorBytes(), 64u << 20);
  const int64_t after_open = dmoe_testing::ResidentBytes();
  EXPECT_LT(after_open - before_open, 4 << 20) << "Open must not read the tensor data";

  DMOE_ASSERT_OK_AND_ASSIGN(TensorView head, ckpt->Get("lm_head.weight"));
  ASSERT_EQ(head.nbytes, 32u << 20);
  uint64_t checksum = 0;
  const unsigned char* p = static_cast<const unsigned char*>(head.data);
  for (size_t i = 0; i < head.nbytes; i += 512) checksum += p[i];
  EXPECT_NE(checksum, 0u);
  const int64_t after_touch = dmoe_testing::ResidentBytes();
  // Touching one tensor maps about that tensor, not the whole 70 MB file.
  EXPECT_GT(after_touch - after_open, static_cast<int64_t>(head.nbytes) / 2);
  EXPECT_LT(after_touch - after_open, static_cast<int64_t>(head.nbytes) + (4 << 20));
}

}  // namespace
}  // namespace dmoe::model
