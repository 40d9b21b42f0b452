#include "model/quantize.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace dmoe::model {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kIndexFile[] = "model.safetensors.index.json";

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

absl::Status CheckDirs(const QuantizeOptions& o) {
  if (o.format != "q8") {
    return absl::InvalidArgumentError(
        absl::StrCat("--format ", o.format, ": unknown (supported: q8)"));
  }
  std::error_code ec;
  if (fs::exists(o.out_dir, ec) && fs::equivalent(o.in_dir, o.out_dir, ec)) {
    return absl::InvalidArgumentError("--out is the input checkpoint: write to a new directory");
  }
  if (fs::exists(o.out_dir, ec) && !fs::is_empty(o.out_dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out ", o.out_dir, " exists and is not empty"));
  }
  fs::create_directories(o.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", o.out_dir, ": ", ec.message()));
  return absl::OkStatus();
}

// config.json with the quantization recorded; the checkpoint's own dtype stays (it is what
// the float tensors are).
absl::Status WriteConfig(const QuantizeOptions& o) {
  DMOE_ASSIGN_OR_RETURN(std::string text, ReadFile(fs::path(o.in_dir) / "config.json"));
  Json config = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  config["quantization_config"] = {
      {"quant_method", "dmoe_q8"}, {"bits", 8}, {"block_size", kQ8Block}};
  return WriteFile(fs::path(o.out_dir) / "config.json", config.dump(2) + "\n");
}

// Every file that is not weights or config (tokenizer, chat template, model card...).
absl::Status CopyOtherFiles(const QuantizeOptions& o) {
  for (const fs::directory_entry& entry : fs::directory_iterator(o.in_dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename().string();
    if (name == "config.json" || name == kIndexFile || absl::EndsWith(name, ".safetensors")) {
      continue;
    }
    std::error_code ec;
    fs::copy_file(entry.path(), fs::path(o.out_dir) / name, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", name, ": ", ec.message()));
  }
  return absl::OkStatus();
}

// One output safetensors file: the same tensors, the large matrices as I8 + scales.
absl::Status QuantizeFile(const Checkpoint& checkpoint, const std::vector<std::string>& names,
                          const fs::path& out, const QuantizeOptions& o, size_t* done,
                          size_t total) {
  std::vector<SafetensorsTensorInfo> infos;
  for (const std::string& name : names) {
    DMOE_ASSIGN_OR_RETURN(TensorView view, checkpoint.Get(name));
    if (view.dtype == DType::kI8) {
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint.FileOf(name), ": tensor '", name, "' is already I8 (a q8 checkpoint?)"));
    }
    const bool q8 = view.shape.size() == 2 && QuantizesToQ8(name, view.dim(0), view.dim(1));
    if (!q8) {
      infos.push_back({name, view.dtype, view.shape});
      continue;
    }
    infos.push_back({name, DType::kI8, view.shape});
    infos.push_back({name + kQ8ScaleSuffix, DType::kF32, {view.dim(0), view.dim(1) / kQ8Block}});
  }
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                        SafetensorsWriter::Create(out.string(), infos));
  std::vector<float> row;
  for (const std::string& name : names) {
    DMOE_ASSIGN_OR_RETURN(TensorView view, checkpoint.Get(name));
    const bool q8 = view.shape.size() == 2 && QuantizesToQ8(name, view.dim(0), view.dim(1));
    if (!q8) {
      DMOE_RETURN_IF_ERROR(writer->Write(name, view.data, view.nbytes));
    } else {
      const int64_t rows = view.dim(0), cols = view.dim(1);
      const WeightMatrix source{view.dtype, rows, cols, view.data};
      std::vector<int8_t> q(static_cast<size_t>(rows * cols));
      std::vector<float> scales(static_cast<size_t>(rows * (cols / kQ8Block)));
      row.resize(cols);
      for (int64_t r = 0; r < rows; ++r) {
        source.RowToF32(r, row.data());
        QuantizeRowQ8(row.data(), cols, &q[r * cols], &scales[r * (cols / kQ8Block)]);
      }
      DMOE_RETURN_IF_ERROR(writer->Write(name, q.data(), q.size()));
      DMOE_RETURN_IF_ERROR(writer->Write(name + kQ8ScaleSuffix, scales.data(),
                                         scales.size() * sizeof(float)));
    }
    ++*done;
    if (o.progress && (*done % 100 == 0 || *done == total)) {
      o.progress(absl::StrCat(*done, " of ", total, " tensors"));
    }
  }
  return writer->Finish();
}

}  // namespace

void QuantizeRowQ8(const float* values, int64_t cols, int8_t* q, float* scales) {
  for (int64_t b = 0; b * kQ8Block < cols; ++b) {
    const float* v = values + b * kQ8Block;
    float amax = 0.0f;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float scale = amax / 127.0f;
    scales[b] = scale;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      const float level = scale == 0.0f ? 0.0f : std::nearbyint(v[i] / scale);
      q[b * kQ8Block + i] = static_cast<int8_t>(std::clamp(level, -127.0f, 127.0f));
    }
  }
}

bool QuantizesToQ8(const std::string& name, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || cols % kQ8Block != 0) return false;
  if (absl::EndsWith(name, ".mlp.gate.weight")) return false;  // the router: F32 by design
  for (const char* suffix : {"word_embeddings.weight", "lm_head.weight", "query_key_value.weight",
                             "attention.dense.weight", "gate_proj.weight", "up_proj.weight",
                             "down_proj.weight"}) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

absl::Status QuantizeCheckpoint(const QuantizeOptions& o) {
  DMOE_RETURN_IF_ERROR(CheckDirs(o));
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(o.in_dir));
  // Output files mirror the input's, tensor for tensor.
  std::map<std::string, std::vector<std::string>> by_file;
  for (const std::string& name : checkpoint->TensorNames()) {
    by_file[fs::path(checkpoint->FileOf(name)).filename().string()].push_back(name);
  }
  size_t done = 0;
  const size_t total = checkpoint->TensorNames().size();
  for (const auto& [file, names] : by_file) {
    if (o.progress) o.progress(absl::StrCat("writing ", file));
    DMOE_RETURN_IF_ERROR(
        QuantizeFile(*checkpoint, names, fs::path(o.out_dir) / file, o, &done, total));
  }
  const fs::path index = fs::path(o.in_dir) / kIndexFile;
  if (fs::exists(index)) {
    DMOE_ASSIGN_OR_RETURN(std::string text, ReadFile(index));
    Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!json.is_object() || !json.contains("weight_map") || !json["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": no weight_map object"));
    }
    Json& map = json["weight_map"];
    std::vector<std::pair<std::string, std::string>> scales;
    for (auto it = map.begin(); it != map.end(); ++it) {
      auto view = checkpoint->Get(it.key());
      if (view.ok() && view->shape.size() == 2 &&
          QuantizesToQ8(it.key(), view->dim(0), view->dim(1))) {
        scales.emplace_back(it.key() + kQ8ScaleSuffix, it.value().get<std::string>());
      }
    }
    for (const auto& [name, file] : scales) map[name] = file;
    DMOE_RETURN_IF_ERROR(WriteFile(fs::path(o.out_dir) / kIndexFile, json.dump(2) + "\n"));
  }
  DMOE_RETURN_IF_ERROR(WriteConfig(o));
  return CopyOtherFiles(o);
}

}  // namespace dmoe::model
