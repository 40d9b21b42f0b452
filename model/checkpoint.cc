#include "model/checkpoint.h"

#include <sys/stat.h>

#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace dmoe::model {
namespace {

using Json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Shard names are plain file names next to the index (no directories, no "..").
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

// Parses the index into shard file name -> tensors it should hold.
absl::StatusOr<std::map<std::string, std::vector<std::string>>> ReadIndex(
    const std::string& index_path) {
  DMOE_ASSIGN_OR_RETURN(std::string text, internal::ReadCheckpointFile(index_path));
  Json index = Json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": malformed JSON"));
  }
  auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": missing object 'weight_map'"));
  }
  if (map_it->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": 'weight_map' is empty"));
  }
  std::map<std::string, std::vector<std::string>> shards;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    if (!it.value().is_string() || !IsPlainFileName(it.value().get<std::string>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor '", it.key(), "' maps to ", it.value().dump(),
                       ", expected the file name of a shard in the same directory"));
    }
    shards[it.value().get<std::string>()].push_back(it.key());
  }
  return shards;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  DMOE_ASSIGN_OR_RETURN(ckpt->config_, LoadModelConfig(dir));

  const std::string single_path = absl::StrCat(dir, "/", kSingleFile);
  const std::string index_path = absl::StrCat(dir, "/", kIndexFile);
  if (IsRegularFile(single_path)) {
    if (IsRegularFile(index_path)) {
      DMOE_LOG(WARNING) << dir << ": both " << kSingleFile << " and " << kIndexFile
                        << " exist; using " << kSingleFile;
    }
    ckpt->weights_source_ = single_path;
    DMOE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    for (const auto& [name, view] : file->tensors()) ckpt->index_.emplace(name, 0);
    ckpt->files_.push_back(std::move(file));
    return ckpt;
  }
  if (!IsRegularFile(index_path)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no ", kSingleFile, " or ", kIndexFile));
  }

  ckpt->weights_source_ = index_path;
  DMOE_ASSIGN_OR_RETURN(auto shards, ReadIndex(index_path));
  for (const auto& [shard_name, listed] : shards) {
    const std::string shard_path = absl::StrCat(dir, "/", shard_name);
    if (!IsRegularFile(shard_path)) {
      return absl::NotFoundError(absl::StrCat(
          index_path, ": shard '", shard_name, "' (holding tensor '", listed.front(), "'",
          listed.size() > 1 ? absl::StrCat(" and ", listed.size() - 1, " more") : "",
          ") not found at ", shard_path));
    }
    DMOE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(shard_path));
    for (const std::string& name : listed) {
      if (file->tensors().count(name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            shard_path, ": missing tensor '", name, "' (listed in ", index_path, ")"));
      }
    }
    const size_t file_index = ckpt->files_.size();
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = ckpt->index_.emplace(name, file_index);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat(shard_path, ": tensor '", name, "' is also stored in ",
                         ckpt->files_[it->second]->path()));
      }
    }
    ckpt->files_.push_back(std::move(file));
  }
  return ckpt;
}

bool Checkpoint::Has(const std::string& name) const { return index_.count(name) > 0; }

absl::StatusOr<TensorView> Checkpoint::Get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(weights_source_, ": missing tensor '", name, "'"));
  }
  return files_[it->second]->tensors().at(name);
}

absl::StatusOr<TensorView> Checkpoint::GetWithShape(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  DMOE_ASSIGN_OR_RETURN(TensorView view, Get(name));
  if (view.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(FileOf(name), ": tensor '", name,
                                                   "' has shape ", ShapeString(view.shape),
                                                   ", expected ", ShapeString(expected_shape)));
  }
  return view;
}

std::string Checkpoint::FileOf(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? std::string() : files_[it->second]->path();
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, file] : index_) names.push_back(name);
  return names;
}

uint64_t Checkpoint::TotalTensorBytes() const {
  uint64_t total = 0;
  for (const auto& file : files_) {
    for (const auto& [name, view] : file->tensors()) total += view.nbytes;
  }
  return total;
}

}  // namespace dmoe::model
