// The scheduler's journal (ARCHITECTURE.md "Failure model"): an append-only file of accepted
// requests, their committed blocks and their ends, so a restarted scheduler resumes every
// request that had not ended (docs/operations.md "Scheduler journal").
//
// File format: the 8-byte magic "DMOEJNL\x01", then records
//   u32 length | u32 crc32c(payload) | payload[length]        (little-endian)
// whose payload starts with a type byte:
//   1 accept: request id, prompt ids, the resolved GenerationParams (seed included), deadline
//   2 commit: request id, offset, ids, logprobs (a committed block; offsets are contiguous)
//   3 end:    request id (the request finished, failed or was cancelled: never resumed)
// A crash can leave a torn last record (short, or its CRC does not match): Open truncates it.
// A CRC mismatch before the last record is corruption: Open fails with DATA_LOSS naming the
// file and the record's offset, and the operator decides (move the file away to start empty).
//
// Durability (JournalFsync): every record is written with write(2) before the scheduler
// streams the block it describes, so a killed process (SIGKILL, OOM) loses nothing; only a
// machine crash loses what is not yet fsynced. kInterval (the default) fsyncs at most every
// fsync_interval (group commit): a machine crash loses at most that interval's records, which
// costs recomputation only, because decoding is deterministic given prompt, params and seed.
//
// Compaction: when ended requests dominate the file, the live requests are rewritten to
// PATH.compact (one accept and one merged commit each), fsynced and renamed over PATH.
#ifndef DMOE_SCHEDULER_REQUEST_JOURNAL_H_
#define DMOE_SCHEDULER_REQUEST_JOURNAL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/sequence.h"

namespace dmoe::scheduler {

// When appended records reach the disk (fsync/fdatasync).
enum class JournalFsync {
  kAlways,    // after every record, before Append returns: nothing is lost, each record waits
  kInterval,  // a background thread every fsync_interval (group commit): a machine crash loses
              // at most the last interval
  kNever,     // left to the OS: a machine crash loses what the kernel had not written back
};
// "always", "interval" or "never"; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<JournalFsync> ParseJournalFsync(absl::string_view name, absl::string_view field);
std::string JournalFsyncName(JournalFsync fsync);

struct RequestJournalOptions {
  std::string path;  // created when missing; its directory must exist
  JournalFsync fsync = JournalFsync::kInterval;
  absl::Duration fsync_interval = absl::Milliseconds(100);  // kInterval only
  // Compact when the file is at least this big and live records are under live_fraction of
  // it (ended requests dominate). The floor keeps small files from being rewritten often.
  int64_t compact_min_bytes = 4 << 20;
  double compact_live_fraction = 0.5;
  // Told of every appended record (its type: "accept", "commit" or "end"; its bytes, framing
  // included) and of every fdatasync's duration: the scheduler's metrics. Called under the
  // journal's lock, so cheap and never back into the journal. Null: nobody is told.
  std::function<void(const char* type, int64_t bytes)> on_record = nullptr;
  std::function<void(absl::Duration took)> on_sync = nullptr;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// A request the journal holds that has not ended.
struct JournaledRequest {
  std::string request_id;
  std::vector<int32_t> prompt;
  engine::GenerationParams params;
  absl::Time deadline = absl::InfiniteFuture();
  std::vector<int32_t> ids;     // committed so far, the commits concatenated
  std::vector<float> logprobs;  // parallel to ids
};

struct RequestJournalStats {
  int64_t file_bytes = 0;
  int64_t live_bytes = 0;       // bytes of the live requests' records
  int64_t live_requests = 0;
  int64_t compactions = 0;
  int64_t truncated_bytes = 0;  // torn tail cut by Open
};

// Thread-safe: appends from any thread are serialised under one mutex.
class RequestJournal {
 public:
  // Opens (or creates) options.path and reads it back: recovered() is its live requests.
  // A torn tail is truncated (logged). Errors: INVALID_ARGUMENT for bad options, DATA_LOSS
  // naming the file and offset for a corrupt record that is not the last one, or a file that
  // is not a journal; INTERNAL / the errno's code for I/O errors.
  static absl::StatusOr<std::unique_ptr<RequestJournal>> Open(const RequestJournalOptions& options);
  // Stops the fsync thread and fsyncs what is left.
  ~RequestJournal();
  RequestJournal(const RequestJournal&) = delete;
  RequestJournal& operator=(const RequestJournal&) = delete;

  // The requests that had not ended when Open read the file, in accept order.
  const std::vector<JournaledRequest>& recovered() const { return recovered_; }

  // Appends. Accept of an id that is live replaces it (a re-submitted request starts over).
  // Commit needs a live id and offset == its committed count (ALREADY_EXISTS for an offset
  // below it whose ids are journalled, FAILED_PRECONDITION otherwise). End of an unknown id is
  // a no-op. I/O errors are returned; the journal stays usable.
  absl::Status Accept(const JournaledRequest& request);
  absl::Status Commit(absl::string_view request_id, int64_t offset,
                      const std::vector<int32_t>& ids, const std::vector<float>& logprobs);
  absl::Status End(absl::string_view request_id);
  // fsyncs now (whatever the policy).
  absl::Status Sync();
  // Rewrites the live set now (tests; Append does it by the options' rule).
  absl::Status Compact();

  RequestJournalStats Stats() const;
  const RequestJournalOptions& options() const { return options_; }

 private:
  struct Live {
    JournaledRequest request;
    int64_t bytes = 0;  // bytes of its records in the file
    uint64_t order = 0;  // accept order
  };
  explicit RequestJournal(const RequestJournalOptions& options) : options_(options) {}

  absl::Status Recover();
  // `type` names the record for options_.on_record.
  absl::Status AppendLocked(const std::string& record, const char* type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MaybeCompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FlushLoop();

  const RequestJournalOptions options_;
  std::vector<JournaledRequest> recovered_;

  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  int64_t file_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t live_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t compactions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t truncated_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 0;
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, Live> live_ ABSL_GUARDED_BY(mu_);
  std::thread flusher_;
};

namespace internal {
// CRC-32C (Castagnoli), the checksum of every record; exposed for tests.
uint32_t Crc32c(absl::string_view data);
// A record's payload for one accepted request, and its inverse (DATA_LOSS when malformed).
std::string EncodeAccept(const JournaledRequest& request);
absl::StatusOr<JournaledRequest> DecodeAccept(absl::string_view payload);
}  // namespace internal

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_REQUEST_JOURNAL_H_
