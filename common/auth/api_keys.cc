#include "common/auth/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dmoe::auth {

absl::string_view RoleName(Role role) { return role == Role::kAdmin ? "admin" : "user"; }

Sha256Digest Sha256(absl::string_view data) {
  Sha256Digest digest{};
  unsigned int length = 0;
  // EVP_Digest cannot fail for SHA-256 on in-memory data short of an allocation failure.
  DMOE_CHECK(EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_sha256(),
                        nullptr) == 1 &&
             length == digest.size());
  return digest;
}

std::string HexDigest(const Sha256Digest& digest) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

bool DigestsEqual(const Sha256Digest& a, const Sha256Digest& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

namespace {

bool IsHex(absl::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isxdigit(c); });
}

absl::Status LineError(absl::string_view source, int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ":", line, ": ", what));
}

// "retry after 0.25 s" with at least millisecond resolution and no zero.
std::string RetryHint(double seconds) {
  return absl::StrFormat("retry after %.3g s", std::max(seconds, 0.001));
}

}  // namespace

absl::StatusOr<std::vector<KeyEntry>> ParseKeysFile(absl::string_view text,
                                                    absl::string_view source) {
  std::vector<KeyEntry> entries;
  std::set<std::string> hashes;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() < 3) {
      return LineError(source, line_number,
                       "expected NAME ROLE SHA256HEX [rps=N] [streams=N] [tpm=N]");
    }
    KeyEntry entry;
    entry.tenant = std::string(fields[0]);
    if (fields[1] == "user") {
      entry.role = Role::kUser;
    } else if (fields[1] == "admin") {
      entry.role = Role::kAdmin;
    } else {
      return LineError(source, line_number,
                       absl::StrCat("role must be user or admin, got '", fields[1], "'"));
    }
    if (fields[2].size() != 64 || !IsHex(fields[2])) {
      return LineError(source, line_number,
                       "the key's hash must be 64 hex digits of SHA-256 (the file holds "
                       "hashes, never keys; `dmoe keys new` prints the line)");
    }
    const std::string bytes = absl::HexStringToBytes(absl::AsciiStrToLower(fields[2]));
    std::memcpy(entry.hash.data(), bytes.data(), entry.hash.size());
    if (!hashes.insert(bytes).second) {
      return LineError(source, line_number, "the same key hash appears twice");
    }
    for (size_t i = 3; i < fields.size(); ++i) {
      const std::vector<absl::string_view> kv = absl::StrSplit(fields[i], absl::MaxSplits('=', 1));
      double value = 0;
      if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &value) || !std::isfinite(value) ||
          value < 0) {
        return LineError(source, line_number,
                         absl::StrCat("expected LIMIT=N with N >= 0, got '", fields[i], "'"));
      }
      if (kv[0] == "rps") {
        entry.limits.requests_per_second = value;
      } else if (kv[0] == "streams" || kv[0] == "tpm") {
        if (value != std::floor(value) || value > 1e15) {
          return LineError(source, line_number,
                           absl::StrCat(kv[0], " must be a whole number, got '", kv[1], "'"));
        }
        (kv[0] == "streams" ? entry.limits.max_streams : entry.limits.tokens_per_minute) =
            static_cast<int64_t>(value);
      } else {
        return LineError(source, line_number,
                         absl::StrCat("unknown limit '", kv[0], "' (rps, streams, tpm)"));
      }
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

absl::StatusOr<GeneratedKey> GenerateKey(absl::string_view tenant, Role role) {
  if (tenant.empty() || tenant.find_first_of(" \t\r\n#") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("key name '", tenant, "' must be non-empty without spaces or '#'"));
  }
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return absl::InternalError("RAND_bytes failed: no randomness for a key");
  }
  GeneratedKey out;
  out.key = absl::StrCat(
      "dmoe-", absl::WebSafeBase64Escape(absl::string_view(reinterpret_cast<char*>(bytes),
                                                          sizeof(bytes))));
  OPENSSL_cleanse(bytes, sizeof(bytes));
  out.line = absl::StrCat(tenant, " ", RoleName(role), " ", HexDigest(Sha256(out.key)));
  return out;
}

namespace internal {

// One tenant's limits and what it has used. Thread-safe.
class TenantState {
 public:
  TenantState(std::string name, std::function<absl::Time()> clock)
      : name_(std::move(name)), clock_(std::move(clock)) {}

  const std::string& name() const { return name_; }

  void SetLimits(const TenantLimits& limits) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    limits_ = limits;
  }

  // OK and the call charged, or RESOURCE_EXHAUSTED with a retry hint (then `reason` says
  // which limit: rate, streams, tokens) and nothing charged.
  absl::Status TryAdmit(CallKind kind, std::string* reason) ABSL_LOCKS_EXCLUDED(mu_) {
    const absl::Time now = clock_();
    absl::MutexLock lock(&mu_);
    Refill(now);
    if (kind == CallKind::kGeneration && limits_.max_streams > 0 &&
        streams_ >= limits_.max_streams) {
      *reason = "streams";
      return absl::ResourceExhaustedError(absl::StrCat(
          "tenant '", name_, "': ", streams_, " of ", limits_.max_streams,
          " concurrent streams in use; retry when one ends (", RetryHint(1), ")"));
    }
    if (kind == CallKind::kGeneration && limits_.tokens_per_minute > 0 && tokens_ <= 0) {
      *reason = "tokens";
      const double per_second = limits_.tokens_per_minute / 60.0;
      return absl::ResourceExhaustedError(
          absl::StrCat("tenant '", name_, "': tokens per minute limit ",
                       limits_.tokens_per_minute, " reached; ",
                       RetryHint((1 - tokens_) / per_second)));
    }
    if (limits_.requests_per_second > 0 && bucket_ < 1) {
      *reason = "rate";
      return absl::ResourceExhaustedError(
          absl::StrCat("tenant '", name_, "': requests per second limit ",
                       limits_.requests_per_second, " reached; ",
                       RetryHint((1 - bucket_) / limits_.requests_per_second)));
    }
    if (limits_.requests_per_second > 0) bucket_ -= 1;
    if (kind == CallKind::kGeneration) ++streams_;
    return absl::OkStatus();
  }

  void ReleaseStream() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    --streams_;
  }

  void ChargeTokens(int64_t tokens) ABSL_LOCKS_EXCLUDED(mu_) {
    const absl::Time now = clock_();
    absl::MutexLock lock(&mu_);
    Refill(now);
    if (limits_.tokens_per_minute > 0) tokens_ -= static_cast<double>(tokens);
  }

 private:
  void Refill(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (refilled_ == absl::InfinitePast()) {  // first use: full buckets
      bucket_ = std::max(1.0, limits_.requests_per_second);
      tokens_ = static_cast<double>(limits_.tokens_per_minute);
      refilled_ = now;
      return;
    }
    const double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - refilled_));
    refilled_ = std::max(refilled_, now);
    bucket_ = std::min(std::max(1.0, limits_.requests_per_second),
                       bucket_ + elapsed * limits_.requests_per_second);
    tokens_ = std::min(static_cast<double>(limits_.tokens_per_minute),
                       tokens_ + elapsed * limits_.tokens_per_minute / 60.0);
  }

  const std::string name_;
  const std::function<absl::Time()> clock_;
  absl::Mutex mu_;
  TenantLimits limits_ ABSL_GUARDED_BY(mu_);
  double bucket_ ABSL_GUARDED_BY(mu_) = 0;  // requests that may start now
  double tokens_ ABSL_GUARDED_BY(mu_) = 0;  // tokens left in the minute's budget (may go < 0)
  int64_t streams_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time refilled_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace internal

Admission::Admission(std::shared_ptr<internal::TenantState> state, bool holds_stream)
    : state_(std::move(state)), holds_stream_(holds_stream) {}

Admission::Admission(Admission&& other) noexcept
    : state_(std::move(other.state_)), holds_stream_(std::exchange(other.holds_stream_, false)) {}

Admission& Admission::operator=(Admission&& other) noexcept {
  if (this != &other) {
    Release();
    state_ = std::move(other.state_);
    holds_stream_ = std::exchange(other.holds_stream_, false);
  }
  return *this;
}

Admission::~Admission() { Release(); }

void Admission::Release() {
  if (state_ && holds_stream_) state_->ReleaseStream();
  holds_stream_ = false;
  state_.reset();
}

const std::string& Admission::tenant() const {
  static const std::string* const kNone = new std::string();
  return state_ ? state_->name() : *kNone;
}

void Admission::AddTokens(int64_t tokens) {
  if (state_ && tokens > 0) state_->ChargeTokens(tokens);
}

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read the API keys file ", path, ": ",
                                            std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

ApiKeys::ApiKeys(const ApiKeysOptions& options)
    : options_(options), entries_(std::make_shared<std::vector<KeyEntry>>()) {}

ApiKeys::~ApiKeys() = default;

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const ApiKeysOptions& options) {
  std::unique_ptr<ApiKeys> keys(new ApiKeys(options));
  DMOE_RETURN_IF_ERROR(keys->Reload());
  return keys;
}

std::unique_ptr<ApiKeys> ApiKeys::FromEntries(std::vector<KeyEntry> entries,
                                              const ApiKeysOptions& options) {
  ApiKeysOptions copy = options;
  copy.path.clear();
  std::unique_ptr<ApiKeys> keys(new ApiKeys(copy));
  keys->Install(std::move(entries));
  return keys;
}

absl::Time ApiKeys::Now() const { return options_.clock ? options_.clock() : absl::Now(); }

absl::Status ApiKeys::Reload() {
  if (options_.path.empty()) {
    return absl::FailedPreconditionError("these API keys were not loaded from a file");
  }
  FileStamp stamp;
  struct stat st;
  if (stat(options_.path.c_str(), &st) == 0) {
    stamp.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    stamp.size = st.st_size;
    stamp.inode = st.st_ino;
  }
  DMOE_ASSIGN_OR_RETURN(std::string text, ReadFile(options_.path));
  DMOE_ASSIGN_OR_RETURN(std::vector<KeyEntry> entries, ParseKeysFile(text, options_.path));
  const size_t count = entries.size();
  Install(std::move(entries));
  {
    absl::MutexLock lock(&file_mu_);
    stamp_ = stamp;
  }
  DMOE_LOG(INFO) << "API keys: " << count << " keys from " << options_.path;
  return absl::OkStatus();
}

void ApiKeys::Install(std::vector<KeyEntry> entries) {
  auto shared = std::make_shared<const std::vector<KeyEntry>>(std::move(entries));
  absl::MutexLock lock(&mu_);
  for (const KeyEntry& e : *shared) {
    std::shared_ptr<internal::TenantState>& state = tenants_[e.tenant];
    if (!state) {
      // The clock by value: an Admission (and its state) may outlive this object.
      state = std::make_shared<internal::TenantState>(
          e.tenant, options_.clock ? options_.clock : std::function<absl::Time()>(absl::Now));
    }
    state->SetLimits(e.limits);
  }
  entries_ = std::move(shared);
}

void ApiKeys::MaybeReload() {
  if (options_.path.empty()) return;
  const absl::Time now = Now();
  {
    absl::MutexLock lock(&file_mu_);
    if (now - last_check_ < options_.check_interval) return;
    last_check_ = now;
    struct stat st;
    if (stat(options_.path.c_str(), &st) != 0) return;  // gone: keep the keys we have
    FileStamp stamp;
    stamp.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    stamp.size = st.st_size;
    stamp.inode = st.st_ino;
    if (stamp == stamp_) return;
    stamp_ = stamp;  // a file that fails to parse is reported once, not on every call
  }
  if (absl::Status status = Reload(); !status.ok()) {
    DMOE_LOG(ERROR) << "API keys: keeping the previous keys: " << status.message();
  }
}

void ApiKeys::CountRefusal(const std::string& tenant, absl::string_view reason) {
  if (options_.refusals == nullptr) return;
  options_.refusals->Add({{"tenant", tenant}, {"reason", std::string(reason)}}).Increment();
}

absl::StatusOr<Admission> ApiKeys::Admit(std::optional<absl::string_view> key, Role required,
                                         CallKind kind) {
  MaybeReload();
  if (!key.has_value() || key->empty()) {
    CountRefusal("", "unauthenticated");
    return absl::UnauthenticatedError(
        "an API key is required: send 'authorization: Bearer KEY' metadata");
  }
  const Sha256Digest presented = Sha256(*key);
  std::shared_ptr<const std::vector<KeyEntry>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries = entries_;
  }
  // Every entry is compared, match or not, so the time does not tell which one matched.
  const KeyEntry* match = nullptr;
  for (const KeyEntry& e : *entries) {
    if (DigestsEqual(e.hash, presented) && match == nullptr) match = &e;
  }
  if (match == nullptr) {
    CountRefusal("", "unauthenticated");
    return absl::UnauthenticatedError("unknown API key");
  }
  if (required == Role::kAdmin && match->role != Role::kAdmin) {
    CountRefusal(match->tenant, "permission_denied");
    return absl::PermissionDeniedError(
        absl::StrCat("tenant '", match->tenant, "': this call needs an admin key"));
  }
  std::shared_ptr<internal::TenantState> state;
  {
    absl::MutexLock lock(&mu_);
    state = tenants_.at(match->tenant);
  }
  std::string reason;
  if (absl::Status status = state->TryAdmit(kind, &reason); !status.ok()) {
    CountRefusal(match->tenant, reason);
    return status;
  }
  return Admission(std::move(state), kind == CallKind::kGeneration);
}

size_t ApiKeys::size() const {
  absl::MutexLock lock(&mu_);
  return entries_->size();
}

}  // namespace dmoe::auth
