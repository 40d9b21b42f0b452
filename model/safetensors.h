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

// Writes a safetensors file the way the reference writer does: the JSON header (keys sorted,
// "__metadata__" first when non-empty) is padded with spaces to a multiple of 8 bytes, and
// the data is laid out by element size (largest first) and then by name, so every tensor
// starts at an offset aligned to its element size. Written to a temporary file and renamed
// into place. INVALID_ARGUMENT naming the tensor when its data size does not match, or for a
// duplicate name.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Name, dtype and shape of a tensor that SafetensorsWriter will write.
struct SafetensorsTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  // shape.product() * DTypeSize(dtype).
  uint64_t nbytes() const;
};

// Streams one safetensors file tensor by tensor, so a large checkpoint never has to be held
// in memory: the header (every name, dtype and shape) is fixed by Create, then each tensor's
// bytes are written once, in any order, with Write. Finish checks that all were written and
// renames the temporary file `<path>.tmp.<pid>.<n>` to `path`; destroying an unfinished writer
// removes the temporary file. Same layout as WriteSafetensors. Thread-compatible.
class SafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<SafetensorsTensorInfo> tensors,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // `nbytes` must equal the declared size; each tensor is written exactly once.
  absl::Status Write(const std::string& name, const void* data, size_t nbytes);
  absl::Status Finish();

  const std::string& path() const { return path_; }
  // Bytes of the finished file.
  uint64_t file_size() const { return file_size_; }

 private:
  struct Slot {
    uint64_t offset = 0;  // from the start of the file
    uint64_t nbytes = 0;
    bool written = false;
  };
  SafetensorsWriter() = default;
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  std::map<std::string, Slot> slots_;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_SAFETENSORS_H_
