#include "scheduler/request_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dmoe::scheduler {
namespace {

constexpr absl::string_view kMagic("DMOEJNL\x01", 8);
constexpr size_t kHeaderBytes = 8;  // u32 length + u32 crc
// A record bigger than this is a corrupt length field, not a request (a 1M-token prompt is 4 MB).
constexpr uint32_t kMaxRecordBytes = 256u << 20;

enum RecordType : uint8_t { kAccept = 1, kCommit = 2, kEnd = 3 };

absl::Status ErrnoStatus(absl::string_view what, const std::string& path) {
  const int err = errno;
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat("journal ", path, ": ", what, ": ", std::strerror(err)));
}

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

// Little-endian encoding of the record fields.
class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void F32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    U32(bits);
  }
  void Str(absl::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out_.append(s.data(), s.size());
  }
  void Ids(const std::vector<int32_t>& ids) {
    U32(static_cast<uint32_t>(ids.size()));
    for (int32_t id : ids) U32(static_cast<uint32_t>(id));
  }
  void Floats(const std::vector<float>& values) {
    U32(static_cast<uint32_t>(values.size()));
    for (float v : values) F32(v);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  bool done() const { return pos_ == in_.size(); }
  uint8_t U8() { return Need(1) ? static_cast<uint8_t>(in_[pos_++]) : 0; }
  uint32_t U32() {
    if (!Need(4)) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(in_[pos_ + i])) << (8 * i);
    pos_ += 4;
    return v;
  }
  uint64_t U64() {
    const uint64_t lo = U32();
    const uint64_t hi = U32();
    return lo | (hi << 32);
  }
  int64_t I64() { return static_cast<int64_t>(U64()); }
  float F32() {
    const uint32_t bits = U32();
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  std::string Str() {
    const uint32_t n = U32();
    if (!Need(n)) return {};
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  std::vector<int32_t> Ids() {
    const uint32_t n = U32();
    if (!Need(static_cast<size_t>(n) * 4)) return {};
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = static_cast<int32_t>(U32());
    return ids;
  }
  std::vector<float> Floats() {
    const uint32_t n = U32();
    if (!Need(static_cast<size_t>(n) * 4)) return {};
    std::vector<float> values(n);
    for (auto& v : values) v = F32();
    return values;
  }

 private:
  bool Need(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) ok_ = false;
    return ok_;
  }
  absl::string_view in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

std::string Frame(const std::string& payload) {
  Writer w;
  w.U32(static_cast<uint32_t>(payload.size()));
  w.U32(internal::Crc32c(payload));
  return absl::StrCat(w.Take(), payload);
}

std::string EncodeCommit(absl::string_view id, int64_t offset, const std::vector<int32_t>& ids,
                         const std::vector<float>& logprobs) {
  Writer w;
  w.U8(kCommit);
  w.Str(id);
  w.I64(offset);
  w.Ids(ids);
  w.Floats(logprobs);
  return w.Take();
}

std::string EncodeEnd(absl::string_view id) {
  Writer w;
  w.U8(kEnd);
  w.Str(id);
  return w.Take();
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) parent = std::filesystem::current_path();
  const std::string dir = parent.string();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open directory", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : ErrnoStatus("fsync directory", dir);
}

}  // namespace

namespace internal {

uint32_t Crc32c(absl::string_view data) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  uint32_t crc = 0xffffffffu;
  for (char ch : data) crc = table[(crc ^ static_cast<uint8_t>(ch)) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

std::string EncodeAccept(const JournaledRequest& r) {
  Writer w;
  w.U8(kAccept);
  w.Str(r.request_id);
  w.Ids(r.prompt);
  const engine::GenerationParams& p = r.params;
  w.U8(1);  // params layout version
  w.U8(p.mode == engine::DecodeMode::kDiffusion ? 0 : 1);
  w.I64(p.max_new_tokens);
  w.F32(p.threshold);
  w.I64(p.block_length);
  w.I64(p.steps);
  w.F32(p.sampling.temperature);
  w.U32(static_cast<uint32_t>(p.sampling.top_k));
  w.F32(p.sampling.top_p);
  w.U64(p.sampling.seed);
  w.U32(static_cast<uint32_t>(p.mask_id));
  w.Ids(p.stop_ids);
  w.U8(p.edit_threshold.has_value() ? 1 : 0);
  w.F32(p.edit_threshold.value_or(0.0f));
  w.I64(p.max_post_steps);
  w.I64(p.max_block_forwards);
  w.U8(r.deadline == absl::InfiniteFuture() ? 1 : 0);
  w.I64(r.deadline == absl::InfiniteFuture() ? 0 : absl::ToUnixMicros(r.deadline));
  return w.Take();
}

absl::StatusOr<JournaledRequest> DecodeAccept(absl::string_view payload) {
  Reader in(payload);
  JournaledRequest r;
  if (in.U8() != kAccept) return absl::DataLossError("not an accept record");
  r.request_id = in.Str();
  r.prompt = in.Ids();
  if (in.U8() != 1) return absl::DataLossError("unknown GenerationParams layout");
  engine::GenerationParams& p = r.params;
  p.mode = in.U8() == 0 ? engine::DecodeMode::kDiffusion : engine::DecodeMode::kAutoregressive;
  p.max_new_tokens = in.I64();
  p.threshold = in.F32();
  p.block_length = in.I64();
  p.steps = in.I64();
  p.sampling.temperature = in.F32();
  p.sampling.top_k = static_cast<int32_t>(in.U32());
  p.sampling.top_p = in.F32();
  p.sampling.seed = in.U64();
  p.mask_id = static_cast<int32_t>(in.U32());
  p.stop_ids = in.Ids();
  const bool has_edit = in.U8() != 0;
  const float edit = in.F32();
  if (has_edit) p.edit_threshold = edit;
  p.max_post_steps = in.I64();
  p.max_block_forwards = in.I64();
  const bool infinite = in.U8() != 0;
  const int64_t micros = in.I64();
  r.deadline = infinite ? absl::InfiniteFuture() : absl::FromUnixMicros(micros);
  if (!in.ok() || !in.done()) return absl::DataLossError("malformed accept record");
  return r;
}

}  // namespace internal

absl::StatusOr<JournalFsync> ParseJournalFsync(absl::string_view name, absl::string_view field) {
  if (name == "always") return JournalFsync::kAlways;
  if (name == "interval") return JournalFsync::kInterval;
  if (name == "never") return JournalFsync::kNever;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": expected always, interval or never, got '", name, "'"));
}

std::string JournalFsyncName(JournalFsync fsync) {
  switch (fsync) {
    case JournalFsync::kAlways: return "always";
    case JournalFsync::kInterval: return "interval";
    case JournalFsync::kNever: return "never";
  }
  return "?";
}

absl::Status RequestJournalOptions::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("journal path is empty");
  if (fsync == JournalFsync::kInterval && fsync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("fsync_interval must be > 0 with fsync=interval");
  }
  // A fraction of 1 or more would compact on every end.
  if (!(compact_live_fraction > 0 && compact_live_fraction < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("compact_live_fraction must be in (0, 1), got ", compact_live_fraction));
  }
  if (compact_min_bytes < 0) return absl::InvalidArgumentError("compact_min_bytes must be >= 0");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RequestJournal>> RequestJournal::Open(
    const RequestJournalOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  auto journal = std::unique_ptr<RequestJournal>(new RequestJournal(options));
  DMOE_RETURN_IF_ERROR(journal->Recover());
  if (options.fsync == JournalFsync::kInterval) {
    journal->flusher_ = std::thread([j = journal.get()] { j->FlushLoop(); });
  }
  return journal;
}

RequestJournal::~RequestJournal() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (flusher_.joinable()) flusher_.join();
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) {
    if (dirty_ && options_.fsync != JournalFsync::kNever) (void)SyncLocked();
    ::close(fd_);
    fd_ = -1;
  }
}

absl::Status RequestJournal::Recover() {
  const std::string& path = options_.path;
  std::string data;
  if (std::filesystem::exists(path)) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("journal ", path, ": cannot read"));
    std::ostringstream buffer;
    buffer << in.rdbuf();
    data = buffer.str();
  }
  absl::MutexLock lock(&mu_);
  size_t good = 0;  // bytes of the file that are kept
  if (data.size() >= kMagic.size()) {
    if (absl::string_view(data).substr(0, kMagic.size()) != kMagic) {
      return absl::DataLossError(
          absl::StrCat("journal ", path, ": not a dmoe journal (bad magic at offset 0)"));
    }
    good = kMagic.size();
  }
  while (good > 0 && good < data.size()) {
    const size_t offset = good;
    const size_t left = data.size() - offset;
    if (left < kHeaderBytes) break;  // torn header
    Reader header(absl::string_view(data).substr(offset, kHeaderBytes));
    const uint32_t length = header.U32();
    const uint32_t stored_crc = header.U32();
    if (length > kMaxRecordBytes || length > left - kHeaderBytes) break;  // torn payload
    const absl::string_view payload = absl::string_view(data).substr(offset + kHeaderBytes, length);
    const uint32_t crc = internal::Crc32c(payload);
    const bool last = offset + kHeaderBytes + length == data.size();
    if (crc != stored_crc) {
      if (last) break;  // a torn write of the last record
      return absl::DataLossError(absl::StrCat(
          "journal ", path, ": record at offset ", offset, " (", length,
          " bytes) fails its CRC32C check (stored ", absl::Hex(stored_crc), ", computed ",
          absl::Hex(crc), "), and records follow it: the file is corrupt. Move it away to start "
          "with an empty journal (its in-flight requests are then lost)"));
    }
    auto corrupt = [&](absl::string_view why) {
      return absl::DataLossError(
          absl::StrCat("journal ", path, ": record at offset ", offset, ": ", why));
    };
    if (payload.empty()) return corrupt("empty record");
    const int64_t bytes = static_cast<int64_t>(kHeaderBytes + length);
    switch (static_cast<uint8_t>(payload[0])) {
      case kAccept: {
        absl::StatusOr<JournaledRequest> r = internal::DecodeAccept(payload);
        if (!r.ok()) return corrupt(r.status().message());
        auto it = live_.find(r->request_id);
        if (it != live_.end()) live_bytes_ -= it->second.bytes;
        Live& live = live_[r->request_id];
        live.request = *std::move(r);
        live.bytes = bytes;
        live.order = next_order_++;
        live_bytes_ += bytes;
        break;
      }
      case kCommit: {
        Reader in(payload);
        in.U8();
        const std::string id = in.Str();
        const int64_t at = in.I64();
        std::vector<int32_t> ids = in.Ids();
        std::vector<float> logprobs = in.Floats();
        if (!in.ok() || !in.done() || ids.size() != logprobs.size()) {
          return corrupt("malformed commit record");
        }
        auto it = live_.find(id);
        if (it == live_.end()) break;  // its request ended before a compaction: harmless
        JournaledRequest& r = it->second.request;
        if (at != static_cast<int64_t>(r.ids.size())) {
          return corrupt(absl::StrCat("commit of request '", id, "' at offset ", at, " but ",
                                      r.ids.size(), " ids are journalled"));
        }
        r.ids.insert(r.ids.end(), ids.begin(), ids.end());
        r.logprobs.insert(r.logprobs.end(), logprobs.begin(), logprobs.end());
        it->second.bytes += bytes;
        live_bytes_ += bytes;
        break;
      }
      case kEnd: {
        Reader in(payload);
        in.U8();
        const std::string id = in.Str();
        if (!in.ok() || !in.done()) return corrupt("malformed end record");
        auto it = live_.find(id);
        if (it != live_.end()) {
          live_bytes_ -= it->second.bytes;
          live_.erase(it);
        }
        break;
      }
      default:
        return corrupt(absl::StrCat("unknown record type ", static_cast<int>(payload[0])));
    }
    good = offset + static_cast<size_t>(bytes);
  }

  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) return ErrnoStatus("open", path);
  if (good < data.size() || good == 0) {
    if (good < data.size()) {
      truncated_bytes_ = static_cast<int64_t>(data.size() - good);
      DMOE_LOG(WARNING) << "journal " << path << ": truncating a torn tail of "
                        << truncated_bytes_ << " bytes at offset " << good
                        << " (a crash during a write)";
    }
    if (good == 0) {
      // New (or shorter than its magic): start it.
      if (::ftruncate(fd_, 0) != 0) return ErrnoStatus("truncate", path);
      DMOE_RETURN_IF_ERROR(WriteAll(fd_, kMagic, path));
      good = kMagic.size();
    } else if (::ftruncate(fd_, static_cast<off_t>(good)) != 0) {
      return ErrnoStatus("truncate", path);
    }
    if (::fsync(fd_) != 0) return ErrnoStatus("fsync", path);
  }
  file_bytes_ = static_cast<int64_t>(good);

  std::vector<const Live*> order;
  for (const auto& [id, live] : live_) order.push_back(&live);
  std::sort(order.begin(), order.end(),
            [](const Live* a, const Live* b) { return a->order < b->order; });
  for (const Live* live : order) recovered_.push_back(live->request);
  return absl::OkStatus();
}

absl::Status RequestJournal::AppendLocked(const std::string& record, const char* type) {
  if (fd_ < 0) return absl::FailedPreconditionError("journal is closed");
  DMOE_RETURN_IF_ERROR(WriteAll(fd_, record, options_.path));
  file_bytes_ += static_cast<int64_t>(record.size());
  if (options_.on_record) options_.on_record(type, static_cast<int64_t>(record.size()));
  dirty_ = true;
  if (options_.fsync == JournalFsync::kAlways) DMOE_RETURN_IF_ERROR(SyncLocked());
  return absl::OkStatus();
}

absl::Status RequestJournal::SyncLocked() {
  if (fd_ < 0 || !dirty_) return absl::OkStatus();
  const absl::Time start = absl::Now();
  if (::fdatasync(fd_) != 0) return ErrnoStatus("fdatasync", options_.path);
  if (options_.on_sync) options_.on_sync(absl::Now() - start);
  dirty_ = false;
  return absl::OkStatus();
}

absl::Status RequestJournal::Accept(const JournaledRequest& request) {
  JournaledRequest fresh = request;
  fresh.ids.clear();
  fresh.logprobs.clear();
  const std::string record = Frame(internal::EncodeAccept(fresh));
  absl::MutexLock lock(&mu_);
  DMOE_RETURN_IF_ERROR(AppendLocked(record, "accept"));
  auto it = live_.find(fresh.request_id);
  if (it != live_.end()) live_bytes_ -= it->second.bytes;
  Live& live = live_[fresh.request_id];
  live.request = std::move(fresh);
  live.bytes = static_cast<int64_t>(record.size());
  live.order = next_order_++;
  live_bytes_ += live.bytes;
  return absl::OkStatus();
}

absl::Status RequestJournal::Commit(absl::string_view request_id, int64_t offset,
                                    const std::vector<int32_t>& ids,
                                    const std::vector<float>& logprobs) {
  if (ids.size() != logprobs.size()) {
    return absl::InvalidArgumentError("commit: ids and logprobs differ in length");
  }
  absl::MutexLock lock(&mu_);
  auto it = live_.find(request_id);
  if (it == live_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("commit: request '", request_id, "' is not live in the journal"));
  }
  JournaledRequest& r = it->second.request;
  const int64_t have = static_cast<int64_t>(r.ids.size());
  if (offset != have) {
    return offset < have ? absl::AlreadyExistsError(absl::StrCat(
                               "commit: request '", request_id, "' offset ", offset,
                               " is journalled already (", have, " ids)"))
                         : absl::FailedPreconditionError(absl::StrCat(
                               "commit: request '", request_id, "' offset ", offset,
                               " leaves a gap after its ", have, " journalled ids"));
  }
  const std::string record = Frame(EncodeCommit(request_id, offset, ids, logprobs));
  DMOE_RETURN_IF_ERROR(AppendLocked(record, "commit"));
  r.ids.insert(r.ids.end(), ids.begin(), ids.end());
  r.logprobs.insert(r.logprobs.end(), logprobs.begin(), logprobs.end());
  it->second.bytes += static_cast<int64_t>(record.size());
  live_bytes_ += static_cast<int64_t>(record.size());
  return absl::OkStatus();
}

absl::Status RequestJournal::End(absl::string_view request_id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(request_id);
  if (it == live_.end()) return absl::OkStatus();
  DMOE_RETURN_IF_ERROR(AppendLocked(Frame(EncodeEnd(request_id)), "end"));
  live_bytes_ -= it->second.bytes;
  live_.erase(it);
  return MaybeCompactLocked();
}

absl::Status RequestJournal::Sync() {
  absl::MutexLock lock(&mu_);
  return SyncLocked();
}

absl::Status RequestJournal::Compact() {
  absl::MutexLock lock(&mu_);
  return CompactLocked();
}

absl::Status RequestJournal::MaybeCompactLocked() {
  if (file_bytes_ < options_.compact_min_bytes) return absl::OkStatus();
  if (static_cast<double>(live_bytes_) >=
      options_.compact_live_fraction * static_cast<double>(file_bytes_)) {
    return absl::OkStatus();
  }
  return CompactLocked();
}

// Write the live set beside the journal, make it durable, then rename it over the journal
// (atomic on POSIX) and sync the directory so the rename itself survives a crash. A crash at
// any point leaves either the old file or the new one, both complete.
absl::Status RequestJournal::CompactLocked() {
  const std::string tmp = absl::StrCat(options_.path, ".compact");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("open", tmp);
  std::vector<Live*> order;
  for (auto& [id, live] : live_) order.push_back(&live);
  std::sort(order.begin(), order.end(), [](const Live* a, const Live* b) { return a->order < b->order; });
  std::string out = std::string(kMagic);
  int64_t live_bytes = 0;
  for (Live* live : order) {
    const JournaledRequest& r = live->request;
    JournaledRequest head = r;
    head.ids.clear();
    head.logprobs.clear();
    std::string records = Frame(internal::EncodeAccept(head));
    if (!r.ids.empty()) {
      absl::StrAppend(&records, Frame(EncodeCommit(r.request_id, 0, r.ids, r.logprobs)));
    }
    live->bytes = static_cast<int64_t>(records.size());
    live_bytes += live->bytes;
    absl::StrAppend(&out, records);
  }
  absl::Status written = WriteAll(fd, out, tmp);
  if (written.ok() && ::fsync(fd) != 0) written = ErrnoStatus("fsync", tmp);
  ::close(fd);
  if (written.ok() && ::rename(tmp.c_str(), options_.path.c_str()) != 0) {
    written = ErrnoStatus("rename over the journal", tmp);
  }
  if (!written.ok()) {
    ::unlink(tmp.c_str());
    return written;
  }
  DMOE_RETURN_IF_ERROR(SyncDirectory(options_.path));
  ::close(fd_);
  fd_ = ::open(options_.path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) return ErrnoStatus("reopen after compaction", options_.path);
  DMOE_LOG(INFO) << "journal " << options_.path << ": compacted " << file_bytes_ << " bytes to "
                 << out.size() << " (" << live_.size() << " live requests)";
  file_bytes_ = static_cast<int64_t>(out.size());
  live_bytes_ = live_bytes;
  dirty_ = false;
  ++compactions_;
  return absl::OkStatus();
}

void RequestJournal::FlushLoop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.fsync_interval);
    if (stopping_) break;
    // Under mu_: appends wait for the fsync, which is the group commit (one fsync covers every
    // record written during the interval).
    absl::Status synced = SyncLocked();
    if (!synced.ok()) DMOE_LOG(ERROR) << synced;
  }
}

RequestJournalStats RequestJournal::Stats() const {
  absl::MutexLock lock(&mu_);
  RequestJournalStats stats;
  stats.file_bytes = file_bytes_;
  stats.live_bytes = live_bytes_;
  stats.live_requests = static_cast<int64_t>(live_.size());
  stats.compactions = compactions_;
  stats.truncated_bytes = truncated_bytes_;
  return stats;
}

}  // namespace dmoe::scheduler
