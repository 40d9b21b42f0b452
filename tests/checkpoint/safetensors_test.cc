#include "model/safetensors.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::model {
namespace {

using ::dmoe_testing::StatusIs;
using ::dmoe_testing::TempDir;
using ::dmoe_testing::WriteFileOrDie;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
  return bytes;
}

TensorToWrite MakeTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                         uint32_t seed) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  return TensorToWrite{.name = std::move(name),
                       .dtype = dtype,
                       .shape = std::move(shape),
                       .data = RandomBytes(static_cast<size_t>(numel) * DTypeSize(dtype), seed)};
}

// A raw safetensors file: 8-byte little-endian header length, header, data.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

class SafetensorsRoundTripTest : public ::testing::TestWithParam<DType> {};

TEST_P(SafetensorsRoundTripTest, WritesAndMapsBack) {
  const DType dtype = GetParam();
  TempDir tmp;
  const std::string path = tmp.Join("model.safetensors");
  std::vector<TensorToWrite> tensors = {
      MakeTensor("model.layers.0.mlp.gate.weight", DType::kF32, {16, 8}, 1),  // router stays F32
      MakeTensor("b.weight", dtype, {3, 5}, 2),  // odd byte count in 2-byte dtypes
      MakeTensor("a.weight", dtype, {7}, 3),
      MakeTensor("scalar", dtype, {}, 4),
      MakeTensor("empty", dtype, {0, 4}, 5),
  };
  DMOE_ASSERT_OK(WriteSafetensors(path, tensors, {{"format", "pt"}}));

  DMOE_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file->tensors().size(), tensors.size());
  for (const TensorToWrite& t : tensors) {
    SCOPED_TRACE(t.name);
    auto it = file->tensors().find(t.name);
    ASSERT_NE(it, file->tensors().end());
    const TensorView& v = it->second;
    EXPECT_EQ(v.name, t.name);
    EXPECT_EQ(v.dtype, t.dtype);
    EXPECT_EQ(v.shape, t.shape);
    EXPECT_EQ(v.nbytes, t.data.size());
    EXPECT_EQ(static_cast<size_t>(v.numel()) * DTypeSize(v.dtype), t.data.size());
    if (v.nbytes > 0) {
      EXPECT_EQ(std::memcmp(v.data, t.data.data(), v.nbytes), 0);
      // Each tensor is aligned to its element size (the file is mapped page-aligned).
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % DTypeSize(v.dtype), 0u);
    }
  }

  // Header length is padded so that the data section starts 8-byte aligned.
  const std::string raw = dmoe_testing::ReadFileOrDie(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(file->file_size(), raw.size());
  const Json header = Json::parse(raw.substr(8, header_len));
  EXPECT_EQ(header["b.weight"]["dtype"], std::string(DTypeName(dtype)));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, SafetensorsRoundTripTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(SafetensorsTest, ShapeString) {
  EXPECT_EQ(ShapeString({3072, 2048}), "[3072, 2048]");
  EXPECT_EQ(ShapeString({}), "[]");
}

TEST(SafetensorsTest, WriterStreamsInAnyOrder) {
  TempDir tmp;
  const std::string path = tmp.Join("w.safetensors");
  TensorToWrite a = MakeTensor("a", DType::kBF16, {4, 4}, 1);
  TensorToWrite b = MakeTensor("b", DType::kF32, {3}, 2);
  DMOE_ASSERT_OK_AND_ASSIGN(
      auto writer, SafetensorsWriter::Create(path, {{"a", DType::kBF16, {4, 4}},
                                                    {"b", DType::kF32, {3}}}));
  EXPECT_THAT(writer->Write("a", a.data.data(), 3),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'a'")));
  EXPECT_THAT(writer->Write("zzz", a.data.data(), a.data.size()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'zzz' was not declared")));
  DMOE_ASSERT_OK(writer->Write("b", b.data.data(), b.data.size()));
  EXPECT_THAT(writer->Finish(), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("'a' was declared but never written")));
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "nothing may appear before Finish succeeds";

  DMOE_ASSERT_OK_AND_ASSIGN(
      writer, SafetensorsWriter::Create(path, {{"a", DType::kBF16, {4, 4}},
                                               {"b", DType::kF32, {3}}}));
  DMOE_ASSERT_OK(writer->Write("b", b.data.data(), b.data.size()));
  DMOE_ASSERT_OK(writer->Write("a", a.data.data(), a.data.size()));
  DMOE_ASSERT_OK(writer->Finish());
  writer.reset();
  DMOE_ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(path));
  EXPECT_EQ(std::memcmp(file->tensors().at("a").data, a.data.data(), a.data.size()), 0);
  EXPECT_EQ(std::memcmp(file->tensors().at("b").data, b.data.data(), b.data.size()), 0);
  // Only the file itself is left: no temporaries.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
    names.push_back(e.path().filename().string());
  }
  EXPECT_THAT(names, ::testing::ElementsAre("w.safetensors"));
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  TempDir tmp;
  const std::string path = tmp.Join("x.safetensors");
  TensorToWrite t = MakeTensor("t", DType::kF16, {2, 2}, 1);
  t.data.pop_back();
  EXPECT_THAT(WriteSafetensors(path, {t}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path), HasSubstr("tensor 't'"), HasSubstr("needs 8 bytes"))));
  TensorToWrite u = MakeTensor("u", DType::kF16, {2}, 1);
  EXPECT_THAT(WriteSafetensors(path, {u, u}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'u' is listed twice")));
  EXPECT_THAT(SafetensorsWriter::Create(path, {{"v", DType::kF32, {-1}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'v'")));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  TempDir tmp;
  EXPECT_THAT(SafetensorsFile::Open(tmp.Join("nope.safetensors")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(tmp.Join("nope.safetensors"))));
}

// --- Corrupt files: every error names the file and, where there is one, the tensor. ---

class CorruptSafetensorsTest : public ::testing::Test {
 protected:
  // Writes `contents` to a fresh file and tries to open it.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenRaw(const std::string& contents) {
    WriteFileOrDie(path_, contents);
    return SafetensorsFile::Open(path_);
  }
  TempDir tmp_;
  const std::string path_ = tmp_.Join("corrupt.safetensors");
};

TEST_F(CorruptSafetensorsTest, TruncatedFile) {
  DMOE_ASSERT_OK(WriteSafetensors(path_, {MakeTensor("a.weight", DType::kBF16, {8}, 1),
                                          MakeTensor("z.weight", DType::kBF16, {64, 8}, 2)}));
  std::string raw = dmoe_testing::ReadFileOrDie(path_);
  raw.resize(raw.size() - 100);  // cut inside z.weight (last in the data section)
  EXPECT_THAT(OpenRaw(raw), StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr(path_), HasSubstr("tensor 'z.weight'"),
                                           HasSubstr("out of range"), HasSubstr("truncated"))));
}

TEST_F(CorruptSafetensorsTest, TruncatedInsideLengthField) {
  EXPECT_THAT(OpenRaw("abc"), StatusIs(absl::StatusCode::kInvalidArgument,
                                       AllOf(HasSubstr(path_), HasSubstr("truncated"))));
}

TEST_F(CorruptSafetensorsTest, HeaderLengthBeyondFile) {
  std::string raw = RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                            std::string(4, '\0'));
  raw[0] = static_cast<char>(0xff);  // length now far larger than the file
  raw[1] = static_cast<char>(0xff);
  EXPECT_THAT(OpenRaw(raw), StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr(path_), HasSubstr("header length"),
                                           HasSubstr("exceeds"))));
}

TEST_F(CorruptSafetensorsTest, MalformedHeaderJson) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"a":{"dtype":"F32",)", "")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("malformed JSON header"))));
  EXPECT_THAT(OpenRaw(RawFile("[1,2,3]", "")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("not a JSON object"))));
}

TEST_F(CorruptSafetensorsTest, UnsupportedDtype) {
  EXPECT_THAT(
      OpenRaw(RawFile(R"({"q.weight":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}})",
                      std::string(4, '\0'))),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr(path_ + ": tensor 'q.weight' has unsupported dtype 'I16'")));
  // Safetensors spells dtypes exactly; config-style aliases are not accepted.
  EXPECT_THAT(
      OpenRaw(RawFile(R"({"q.weight":{"dtype":"bfloat16","shape":[2],"data_offsets":[0,4]}})",
                      std::string(4, '\0'))),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unsupported dtype 'bfloat16'")));
}

TEST_F(CorruptSafetensorsTest, OffsetsOutOfRange) {
  EXPECT_THAT(
      OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})",
                      std::string(16, '\0'))),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr(path_), HasSubstr("tensor 'w'"), HasSubstr("[16, 32]"),
                     HasSubstr("out of range"), HasSubstr("16 bytes"))));
}

TEST_F(CorruptSafetensorsTest, OffsetsDoNotMatchShape) {
  EXPECT_THAT(
      OpenRaw(RawFile(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})",
                      std::string(16, '\0'))),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr(path_), HasSubstr("tensor 'w'"), HasSubstr("span 8 bytes"),
                     HasSubstr("BF16 [2, 3] needs 12 bytes"))));
}

TEST_F(CorruptSafetensorsTest, InvalidOffsets) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
                              std::string(8, '\0'))),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("tensor 'w' has invalid data_offsets"))));
  EXPECT_THAT(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(8, '\0'))),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("tensor 'w' has invalid data_offsets"))));
}

TEST_F(CorruptSafetensorsTest, InvalidShape) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                              std::string(4, '\0'))),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("tensor 'w' has invalid shape"))));
}

TEST_F(CorruptSafetensorsTest, OverlappingTensors) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                              std::string(12, '\0'))),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("tensor 'b'"), HasSubstr("overlap"),
                             HasSubstr("'a'"))));
}

TEST_F(CorruptSafetensorsTest, BadMetadata) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"__metadata__":{"format":1}})", "")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("__metadata__"), HasSubstr("format"))));
}

TEST_F(CorruptSafetensorsTest, TensorEntryNotAnObject) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w":[1,2]})", "")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path_), HasSubstr("tensor 'w'"))));
}

TEST_F(CorruptSafetensorsTest, EmptyHeaderIsValid) {
  DMOE_ASSERT_OK_AND_ASSIGN(auto file, OpenRaw(RawFile("{}      ", "")));
  EXPECT_TRUE(file->tensors().empty());
}

}  // namespace
}  // namespace dmoe::model
