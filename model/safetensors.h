// Memory-mapped safetensors files (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then data.
#ifndef DMOE_MODEL_SAFETENSORS_H_
#define DMOE_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace dmoe::model {

// A non-owning view of one tensor's bytes inside a mapped file. Valid while the owning
// SafetensorsFile (or Checkpoint) lives.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  int64_t dim(int i) const { return shape.at(i); }
};

// "[3072, 2048]"
std::string ShapeString(const std::vector<int64_t>& shape);

// One mapped .safetensors file. Thread-safe after Open (read-only).
class SafetensorsFile {
 public:
  // Maps `path` read-only and validates the header: every error names the file and, where
  // there is one, the tensor (unknown dtype, offsets out of range or overlapping the header,
  // byte size not matching dtype x shape, truncated file, malformed JSON).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* base_ = nullptr;
  uint64_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write; `data` holds shape.product() * DTypeSize(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string data;
};

// Writes a safetensors file (tensors sorted by name, as the reference writer does).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace dmoe::model

#endif  // DMOE_MODEL_SAFETENSORS_H_
