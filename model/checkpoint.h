// A Hugging Face-layout checkpoint directory: config.json plus either model.safetensors or
// model.safetensors.index.json with its shards. Tensors stay memory-mapped in their stored
// dtype (a BF16 model stays BF16 in memory).
#ifndef DMOE_MODEL_CHECKPOINT_H_
#define DMOE_MODEL_CHECKPOINT_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dmoe::model {

// Thread-safe after Open (read-only).
class Checkpoint {
 public:
  // Reads config.json and maps the weight files (model.safetensors when present, as in HF
  // transformers, else model.safetensors.index.json and the shards it names). Nothing is read
  // beyond the headers: resident memory grows only with the tensor bytes a caller touches.
  // Errors name the file: NOT_FOUND for a missing config.json, weights or shard;
  // INVALID_ARGUMENT for a corrupt file, an index entry naming a tensor its shard lacks, or a
  // tensor stored in two shards. Tensors a shard holds beyond the index are served too.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }

  bool Has(const std::string& name) const;
  // NOT_FOUND "model.safetensors: missing tensor 'model.norm.weight'" (names the file/dir).
  absl::StatusOr<TensorView> Get(const std::string& name) const;
  // As Get, and INVALID_ARGUMENT "<file>: tensor '<name>' has shape [a, b], expected [c, d]".
  absl::StatusOr<TensorView> GetWithShape(const std::string& name,
                                          const std::vector<int64_t>& expected_shape) const;
  // File that holds `name` (for error messages); empty when absent.
  std::string FileOf(const std::string& name) const;

  std::vector<std::string> TensorNames() const;
  // Sum of tensor bytes over all files.
  uint64_t TotalTensorBytes() const;

 private:
  Checkpoint() = default;
  std::string dir_;
  // model.safetensors or model.safetensors.index.json: named when a tensor is missing.
  std::string weights_source_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // name -> (file index) for fast lookup.
  std::map<std::string, size_t> index_;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CHECKPOINT_H_
