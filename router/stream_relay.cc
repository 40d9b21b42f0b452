#include "router/stream_relay.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"

namespace dmoe::router {
namespace {

// The waits of one stream's re-attach tries: a streak of failed tries starts at the first and
// ends when a try reaches the scheduler (Reset).
class ReattachBackoff {
 public:
  explicit ReattachBackoff(const ReattachOptions& options) : options_(options) {}
  // The wait before the next try after a try ended with `status`, or nullopt when that is
  // the caller's outcome (not UNAVAILABLE, re-attach off, or past the timeout or `deadline`).
  std::optional<absl::Duration> Next(const grpc::Status& status, absl::Time deadline);
  void Reset() { lost_since_.reset(); }

 private:
  const ReattachOptions options_;
  std::optional<absl::Time> lost_since_;  // the first failed try of the current streak
  int tries_ = 0;                         // failed tries in the streak
};

std::optional<absl::Duration> ReattachBackoff::Next(const grpc::Status& status,
                                                    absl::Time deadline) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE || !options_.enabled()) {
    return std::nullopt;
  }
  const absl::Time now = absl::Now();
  if (!lost_since_) {
    lost_since_ = now;
    tries_ = 0;
  }
  absl::Duration wait = options_.initial_backoff;
  for (int i = 0; i < tries_ && wait < options_.max_backoff; ++i) wait *= 2;
  wait = std::min(wait, options_.max_backoff);
  ++tries_;
  if (now + wait >= std::min(*lost_since_ + options_.timeout, deadline)) return std::nullopt;
  return wait;
}

std::string NewRequestId() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t process = absl::Uniform<uint64_t>(absl::BitGen());
  return absl::StrCat("router-", absl::Hex(process, absl::kZeroPad16), "-",
                      counter.fetch_add(1, std::memory_order_relaxed));
}

// Relays the backend's stream without a thread of its own: a ClientReadReactor on the
// backend's async() stub (one Attempt per backend call) chained to this ServerWriteReactor.
// One event buffer, owned in turn: a backend read fills it, a caller write sends it, and only
// when that write is done is the next backend message read (flow control: a slow caller slows
// its backend stream, and the router holds one event per stream). Cancellation goes both ways:
// the caller's cancel (or a failed write) cancels the backend call, and the backend's status
// (errors, the propagated deadline's DEADLINE_EXCEEDED) is the caller's.
//
// The steps are strictly sequential, each started by the previous one's reaction:
//   StartRead -> OnBackendRead(ok) -> StartWrite -> OnWriteDone(ok) -> StartRead -> ...
// ending in OnBackendRead(false) (the backend stream ended) or OnWriteDone(false) (the caller
// is gone), either of which removes the hold on the backend call, so that its OnDone(Status)
// comes only when no step is in flight. There the relay either finishes the caller or, when
// the backend was lost (UNAVAILABLE) before the final event, sets an alarm that starts the
// next Attempt with resume_from_offset = the ids relayed so far. Two reactions end the object
// (the last Attempt's OnDone, via FinishCaller, and the caller's OnDone); the second deletes
// it.
class StreamRelay final : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
 public:
  StreamRelay(grpc::CallbackServerContext* context, dmoe::v1::GenerateRequest request,
              StreamRelayOptions options, auth::Admission admission)
      : options_(std::move(options)),
        caller_deadline_(context->deadline()),
        authorization_(CallerAuthorization(*context)),
        request_(std::move(request)),
        admission_(std::move(admission)) {
    if (request_.request_id().empty()) request_.set_request_id(NewRequestId());
    next_offset_ = request_.resume_from_offset();
    StartAttempt();
  }

  void OnWriteDone(bool ok) override {
    Attempt* attempt = Current();
    if (ok) {
      attempt->StartRead(&event_);
      return;
    }
    attempt->context.TryCancel();  // the caller is gone: end the backend call too
    attempt->RemoveHold();
  }

  // Cancels outside the lock: gRPC may run reactions (which take it) inline in the cancel.
  // Attempts and alarms live as long as the relay, so the pointers stay good.
  void OnCancel() override {
    Attempt* attempt = nullptr;
    grpc::Alarm* alarm = nullptr;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!attempts_.empty()) attempt = attempts_.back().get();
      if (!alarms_.empty()) alarm = alarms_.back().get();
    }
    if (attempt) attempt->context.TryCancel();
    if (alarm) alarm->Cancel();  // a pending re-attach fires at once and finishes
  }

  void OnDone() override { Release(); }

 private:
  // One backend call.
  struct Attempt final : grpc::ClientReadReactor<dmoe::v1::GenerateStreamResponse> {
    explicit Attempt(StreamRelay* relay) : relay(relay) {}
    void OnReadDone(bool ok) override { relay->OnBackendRead(ok); }
    void OnDone(const grpc::Status& status) override { relay->OnBackendDone(status); }
    StreamRelay* const relay;
    grpc::ClientContext context;
  };

  Attempt* Current() {
    absl::MutexLock lock(&mu_);
    return attempts_.back().get();
  }

  void StartAttempt() {
    auto attempt = std::make_unique<Attempt>(this);
    attempt->context.set_deadline(caller_deadline_);
    if (!authorization_.empty()) {
      attempt->context.AddMetadata(auth::kAuthorizationMetadata, authorization_);
    }
    request_.set_resume_from_offset(next_offset_);
    Attempt* started = attempt.get();
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      cancelled = cancelled_;
      if (!cancelled) attempts_.push_back(std::move(attempt));
    }
    if (cancelled) {
      FinishCaller(grpc::Status(grpc::StatusCode::CANCELLED, "the caller cancelled"));
      return;
    }
    options_.stub->async()->GenerateStream(&started->context, &request_, started);
    started->StartRead(&event_);
    started->AddHold();  // reads are also started from caller reactions (OnWriteDone)
    started->StartCall();
  }

  // ok: a backend event is in event_; send it on. !ok: the backend stream has ended (or
  // failed); its OnDone follows with the status.
  void OnBackendRead(bool ok) {
    if (!ok) {
      Current()->RemoveHold();
      return;
    }
    backoff_.Reset();  // this try reached the scheduler: a later loss starts a new streak
    relayed_any_ = true;
    if (event_.has_block() && !TrimToNextOffset(*event_.mutable_block())) {
      Current()->StartRead(&event_);  // all of it was relayed before the loss
      return;
    }
    if (event_.has_final()) {
      final_relayed_ = true;
      event_.mutable_final()->mutable_model()->set_version(options_.version);
      admission_.AddTokens(event_.final().stats().prompt_tokens() +
                           event_.final().stats().generated_tokens());
    }
    StartWrite(&event_);
  }

  // Drops the ids of `block` the caller already has (a scheduler that ignored
  // resume_from_offset); false when nothing is left.
  bool TrimToNextOffset(dmoe::v1::BlockEvent& block) {
    const int64_t end = block.offset() + block.ids_size();
    if (block.offset() < next_offset_) {
      if (end <= next_offset_) return false;
      const int skip = static_cast<int>(next_offset_ - block.offset());
      block.mutable_ids()->erase(block.mutable_ids()->begin(), block.mutable_ids()->begin() + skip);
      if (block.logprobs_size() >= skip) block.mutable_logprobs()->DeleteSubrange(0, skip);
      block.set_offset(next_offset_);
    }
    next_offset_ = std::max(next_offset_, end);
    return true;
  }

  void OnBackendDone(const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && final_relayed_) {
      FinishCaller(grpc::Status::OK);  // the connection broke after the caller had it all
      return;
    }
    if (std::optional<absl::Duration> wait =
            relayed_any_ ? backoff_.Next(status, absl::FromChrono(caller_deadline_))
                         : std::nullopt) {
      DMOE_LOG(WARNING) << "request " << request_.request_id() << ": the scheduler stream was "
                        << "lost (" << status.error_message() << "); re-attaching at offset "
                        << next_offset_ << " in " << absl::FormatDuration(*wait);
      if (options_.on_reattach) options_.on_reattach();
      absl::MutexLock lock(&mu_);
      if (!cancelled_) {
        alarms_.push_back(std::make_unique<grpc::Alarm>());
        alarms_.back()->Set(absl::ToChronoTime(absl::Now() + *wait),
                            [this](bool) { StartAttempt(); });
        return;
      }
    }
    FinishCaller(status);
  }

  void FinishCaller(const grpc::Status& status) {
    admission_ = auth::Admission();  // the slot is free before the caller sees the end
    if (options_.done) options_.done(status);
    Finish(status);
    Release();
  }

  void Release() {
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  const StreamRelayOptions options_;
  const std::chrono::system_clock::time_point caller_deadline_;
  const std::string authorization_;
  dmoe::v1::GenerateRequest request_;  // what each backend call sends
  auth::Admission admission_;          // the tenant's stream slot, until the caller is finished
  // The one event in flight: filled by a backend read, then sent by a caller write, never
  // both at once.
  dmoe::v1::GenerateStreamResponse event_;
  // Touched only by the strictly sequential steps (see above): no lock needed.
  int64_t next_offset_ = 0;     // generated ids the caller has
  bool final_relayed_ = false;
  bool relayed_any_ = false;  // a backend call of this stream delivered an event
  ReattachBackoff backoff_{options_.reattach};

  absl::Mutex mu_;  // the current Attempt and alarm against the caller's OnCancel
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Every backend call and re-attach alarm so far, the current one last; kept until the relay
  // is deleted (a few per loss, bounded by ReattachOptions::timeout), never inside their own
  // reactions.
  std::vector<std::unique_ptr<Attempt>> attempts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<grpc::Alarm>> alarms_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> pending_{2};  // reactions still to come: the caller's OnDone, FinishCaller
};

}  // namespace

std::string CallerAuthorization(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(auth::kAuthorizationMetadata);
  return it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
}

grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* StartStreamRelay(
    grpc::CallbackServerContext* context, dmoe::v1::GenerateRequest request,
    StreamRelayOptions options, auth::Admission admission) {
  return new StreamRelay(context, std::move(request), std::move(options), std::move(admission));
}

}  // namespace dmoe::router
