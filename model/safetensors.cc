#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace dmoe::model {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, so that a corrupt
// length cannot make us parse gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";

absl::Status ErrnoError(const std::string& path, const char* what, int err) {
  std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

absl::Status TensorError(const std::string& path, const std::string& name,
                         const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' ", what));
}

// Safetensors spells dtypes exactly ("BF16"); ParseDType's aliases are not valid here.
bool ParseSafetensorsDType(const std::string& name, DType* dtype) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8}) {
    if (name == DTypeName(d)) {
      *dtype = d;
      return true;
    }
  }
  return false;
}

// Product of `shape` times `element_size`, false on overflow or a negative dimension.
bool ByteSize(const std::vector<int64_t>& shape, uint64_t element_size, uint64_t* out) {
  uint64_t bytes = element_size;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) return false;
  }
  *out = bytes;
  return true;
}

bool ReadUnsigned(const Json& j, uint64_t* out) {
  if (!j.is_number_unsigned()) return false;
  *out = j.get<uint64_t>();
  return true;
}

absl::Status WriteAll(int fd, const void* data, size_t nbytes, uint64_t offset,
                      const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (nbytes > 0) {
    const ssize_t n = ::pwrite(fd, p, nbytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(path, "write failed", errno);
    }
    p += n;
    nbytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(path, "cannot open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(path, "cannot stat", err);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": file is ", size, " bytes, too short for the 8-byte header length (truncated?)"));
  }
  // MAP_PRIVATE + PROT_READ: pages are faulted in from the page cache only when touched, so
  // resident memory follows the bytes actually read, and nothing is ever copied.
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_err = errno;
  ::close(fd);
  if (base == MAP_FAILED) return ErrnoError(path, "mmap failed", mmap_err);

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->base_ = base;
  file->size_ = size;
  const unsigned char* bytes = static_cast<const unsigned char*>(base);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_len, " exceeds the ", size - 8,
                     " bytes after the length field (file is ", size, " bytes; truncated?)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " exceeds the limit of ", kMaxHeaderBytes));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  Json header = Json::parse(header_begin, header_begin + header_len, /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    std::string detail = "syntax error";
    try {
      Json unused = Json::parse(header_begin, header_begin + header_len);
    } catch (const Json::exception& e) {
      detail = e.what();
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON header: ", detail));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not a JSON object"));
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  // (begin, end, name) of every tensor, to check for overlaps.
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& entry = it.value();
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": '__metadata__' must be an object of strings"));
      }
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": '__metadata__' entry '", m.key(), "' must be a string, got ",
              m.value().dump()));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) {
      return TensorError(path, name, "must be an object with dtype, shape and data_offsets");
    }
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return TensorError(path, name, "has no string 'dtype'");
    }
    TensorView view;
    view.name = name;
    const std::string dtype_name = dtype_it->get<std::string>();
    if (!ParseSafetensorsDType(dtype_name, &view.dtype)) {
      return TensorError(path, name,
                         absl::StrCat("has unsupported dtype '", dtype_name,
                                      "' (supported: F32, F16, BF16, I8)"));
    }
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return TensorError(path, name, "has no 'shape' list");
    }
    for (const Json& d : *shape_it) {
      uint64_t dim = 0;
      if (!ReadUnsigned(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
        return TensorError(path, name,
                           absl::StrCat("has invalid shape ", shape_it->dump(),
                                        " (expected non-negative integers)"));
      }
      view.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t begin = 0, end = 0;
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !ReadUnsigned((*offsets_it)[0], &begin) || !ReadUnsigned((*offsets_it)[1], &end) ||
        begin > end) {
      return TensorError(path, name,
                         absl::StrCat("has invalid data_offsets ",
                                      offsets_it == entry.end() ? "(missing)" : offsets_it->dump(),
                                      " (expected [begin, end] with begin <= end)"));
    }
    if (end > data_size) {
      return TensorError(path, name,
                         absl::StrCat("data_offsets [", begin, ", ", end,
                                      "] are out of range: the data section is ", data_size,
                                      " bytes (truncated file?)"));
    }
    uint64_t expected = 0;
    if (!ByteSize(view.shape, DTypeSize(view.dtype), &expected)) {
      return TensorError(path, name,
                         absl::StrCat("shape ", ShapeString(view.shape), " is too large"));
    }
    if (end - begin != expected) {
      return TensorError(path, name,
                         absl::StrCat("data_offsets [", begin, ", ", end, "] span ", end - begin,
                                      " bytes but ", std::string(DTypeName(view.dtype)), " ",
                                      ShapeString(view.shape), " needs ", expected, " bytes"));
    }
    view.data = bytes + data_start + begin;
    view.nbytes = static_cast<size_t>(expected);
    ranges.emplace_back(begin, end, name);
    file->tensors_.emplace(name, std::move(view));
  }

  std::sort(ranges.begin(), ranges.end());
  uint64_t covered_end = 0;  // largest end so far, and whose it is
  const std::string* covered_by = nullptr;
  for (const auto& [b, e, n] : ranges) {
    if (b == e) continue;  // zero-size tensors overlap nothing
    if (covered_by != nullptr && b < covered_end) {
      return TensorError(path, n,
                         absl::StrCat("data_offsets [", b, ", ", e, "] overlap tensor '",
                                      *covered_by, "' (ends at ", covered_end, ")"));
    }
    if (e > covered_end) {
      covered_end = e;
      covered_by = &n;
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

uint64_t SafetensorsTensorInfo::nbytes() const {
  uint64_t bytes = 0;
  return ByteSize(shape, DTypeSize(dtype), &bytes) ? bytes : 0;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<SafetensorsTensorInfo> tensors,
    const std::map<std::string, std::string>& metadata) {
  // Reference layout: larger element sizes first, then by name, so every tensor is aligned to
  // its element size once the header is padded to 8 bytes.
  std::sort(tensors.begin(), tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              const size_t sa = DTypeSize(a.dtype), sb = DTypeSize(b.dtype);
              if (sa != sb) return sa > sb;
              return a.name < b.name;
            });
  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  std::vector<std::pair<std::string, uint64_t>> relative;  // name -> data-section offset
  for (const SafetensorsTensorInfo& t : tensors) {
    if (t.name.empty() || t.name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": invalid tensor name '", t.name, "'"));
    }
    if (header.contains(t.name)) return TensorError(path, t.name, "is listed twice");
    uint64_t nbytes = 0;
    if (!ByteSize(t.shape, DTypeSize(t.dtype), &nbytes)) {
      return TensorError(path, t.name, absl::StrCat("has invalid shape ", ShapeString(t.shape)));
    }
    Json entry = Json::object();
    entry["dtype"] = std::string(DTypeName(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + nbytes};
    header[t.name] = std::move(entry);
    writer->slots_[t.name] = Slot{.offset = offset, .nbytes = nbytes};
    offset += nbytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t data_start = 8 + header_text.size();
  for (auto& [name, slot] : writer->slots_) {
    slot.offset += data_start;
    slot.written = slot.nbytes == 0;
  }
  writer->file_size_ = data_start + offset;

  // Unique per writer: two writers of the same path (even in one process) never share it.
  static std::atomic<uint64_t> counter{0};
  writer->tmp_path_ = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  writer->fd_ = ::open(writer->tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (writer->fd_ < 0) return ErrnoError(writer->tmp_path_, "cannot create", errno);
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(header_text.size() >> (8 * i));
  DMOE_RETURN_IF_ERROR(WriteAll(writer->fd_, length, 8, 0, writer->tmp_path_));
  DMOE_RETURN_IF_ERROR(
      WriteAll(writer->fd_, header_text.data(), header_text.size(), 8, writer->tmp_path_));
  if (::ftruncate(writer->fd_, static_cast<off_t>(writer->file_size_)) != 0) {
    return ErrnoError(writer->tmp_path_, "cannot size", errno);
  }
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

absl::Status SafetensorsWriter::Write(const std::string& name, const void* data, size_t nbytes) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is finished"));
  auto it = slots_.find(name);
  if (it == slots_.end()) return TensorError(path_, name, "was not declared");
  Slot& slot = it->second;
  if (nbytes != slot.nbytes) {
    return TensorError(path_, name,
                       absl::StrCat("has ", nbytes, " bytes of data, declared ", slot.nbytes));
  }
  if (slot.written && slot.nbytes > 0) return TensorError(path_, name, "was written twice");
  DMOE_RETURN_IF_ERROR(WriteAll(fd_, data, nbytes, slot.offset, tmp_path_));
  slot.written = true;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is finished"));
  for (const auto& [name, slot] : slots_) {
    if (!slot.written) return TensorError(path_, name, "was declared but never written");
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_path_.c_str());
    return ErrnoError(tmp_path_, "close failed", err);
  }
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_path_.c_str());
    return ErrnoError(path_, "cannot rename into place", err);
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsTensorInfo> infos;
  infos.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    uint64_t expected = 0;
    if (!ByteSize(t.shape, DTypeSize(t.dtype), &expected)) {
      return TensorError(path, t.name, absl::StrCat("has invalid shape ", ShapeString(t.shape)));
    }
    if (t.data.size() != expected) {
      return TensorError(path, t.name,
                         absl::StrCat("has ", t.data.size(), " bytes of data but ",
                                      std::string(DTypeName(t.dtype)), " ", ShapeString(t.shape),
                                      " needs ",
                                      expected, " bytes"));
    }
    infos.push_back({.name = t.name, .dtype = t.dtype, .shape = t.shape});
  }
  DMOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                        SafetensorsWriter::Create(path, std::move(infos), metadata));
  for (const TensorToWrite& t : tensors) {
    DMOE_RETURN_IF_ERROR(writer->Write(t.name, t.data.data(), t.data.size()));
  }
  return writer->Finish();
}

}  // namespace dmoe::model
