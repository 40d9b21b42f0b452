// API keys of the public API (docs/security.md): a keys file naming each key's tenant, role and
// limits, looked up by the key a caller presents, and the per-tenant limits enforced at
// admission (requests per second, concurrent generations, tokens per minute).
//
// Keys file, one key per line ('#' starts a comment, blank lines are skipped):
//
//   NAME ROLE SHA256HEX [rps=N] [streams=N] [tpm=N]
//
// NAME is the tenant (the `tenant` label of dmoe_api_refusals_total), ROLE is `user` or
// `admin`, SHA256HEX the 64 hex digits of SHA-256 over the key's bytes: the file never holds a
// key, only its hash. Limits absent or 0 mean unlimited. Several keys may name one tenant; they
// share its limits (the last line's limits win).
//
// Keys are matched by hashing the presented key and comparing it with every entry in constant
// time (CRYPTO_memcmp), so neither the position of a match nor the length of a common prefix
// shows in the timing. The file is re-read when its mtime, size or inode changes (checked at
// most every `check_interval`) or on Reload(); a file that no longer parses keeps the last good
// keys and logs why.
#ifndef DMOE_COMMON_AUTH_API_KEYS_H_
#define DMOE_COMMON_AUTH_API_KEYS_H_

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"

namespace dmoe::auth {

enum class Role { kUser, kAdmin };
absl::string_view RoleName(Role role);

using Sha256Digest = std::array<uint8_t, 32>;
Sha256Digest Sha256(absl::string_view data);
std::string HexDigest(const Sha256Digest& digest);  // 64 lowercase hex digits
// Constant-time equality (CRYPTO_memcmp): the time does not depend on where they differ.
bool DigestsEqual(const Sha256Digest& a, const Sha256Digest& b);

struct TenantLimits {
  double requests_per_second = 0;  // token bucket, burst max(1, rps); 0 = unlimited
  int64_t max_streams = 0;         // Generate + GenerateStream calls in flight; 0 = unlimited
  int64_t tokens_per_minute = 0;   // prompt + generated tokens; 0 = unlimited
};

struct KeyEntry {
  std::string tenant;
  Role role = Role::kUser;
  Sha256Digest hash{};
  TenantLimits limits;
};

// Parses a keys file's text. INVALID_ARGUMENT naming `source` and the 1-based line for a
// malformed line (field count, role, hash, limit syntax, duplicate hash).
absl::StatusOr<std::vector<KeyEntry>> ParseKeysFile(absl::string_view text,
                                                    absl::string_view source);

// A fresh key: "dmoe-" + 32 CSPRNG bytes (RAND_bytes) as unpadded base64url, and the keys-file
// line that admits it. INTERNAL when the CSPRNG fails; INVALID_ARGUMENT for a name with
// whitespace or '#'.
struct GeneratedKey {
  std::string key;
  std::string line;  // "NAME ROLE SHA256HEX"
};
absl::StatusOr<GeneratedKey> GenerateKey(absl::string_view tenant, Role role);

// What a call costs against its tenant's limits.
enum class CallKind {
  kGeneration,  // Generate / GenerateStream: a request per second and a stream slot
  kOther,       // Tokenize, ListModels, admin calls: a request per second
};

namespace internal {
class TenantState;
}  // namespace internal

// An admitted call. While it lives it holds one of its tenant's stream slots (kGeneration);
// AddTokens charges the tenant's tokens-per-minute budget. Default-constructed (auth off):
// no tenant, AddTokens does nothing. Movable, not copyable; thread-compatible.
class Admission {
 public:
  Admission() = default;
  Admission(Admission&& other) noexcept;
  Admission& operator=(Admission&& other) noexcept;
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;
  ~Admission();

  // "" when auth is off.
  const std::string& tenant() const;
  void AddTokens(int64_t tokens);

 private:
  friend class ApiKeys;
  Admission(std::shared_ptr<internal::TenantState> state, bool holds_stream);
  void Release();

  std::shared_ptr<internal::TenantState> state_;
  bool holds_stream_ = false;
};

struct ApiKeysOptions {
  std::string path;  // the keys file; must exist and parse at Load
  // How often Admit() checks the file's mtime/size/inode for a change.
  absl::Duration check_interval = absl::Seconds(1);
  // Where refusals are counted, with labels tenant and reason: the process's
  // dmoe_api_refusals_total (metrics::CounterFamily). Not owned; null: not counted.
  prometheus::Family<prometheus::Counter>* refusals = nullptr;
  // Time source of the token buckets and the file check (tests); null: absl::Now.
  std::function<absl::Time()> clock = nullptr;
};

// Thread-safe.
class ApiKeys {
 public:
  // The file's errors (NOT_FOUND / INVALID_ARGUMENT naming the line).
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const ApiKeysOptions& options);
  // Keys already parsed (tests); Reload() then fails with FAILED_PRECONDITION.
  static std::unique_ptr<ApiKeys> FromEntries(std::vector<KeyEntry> entries,
                                              const ApiKeysOptions& options = {});
  ~ApiKeys();

  // Re-reads the file now. On error the previous keys stay in force.
  absl::Status Reload();

  // Authenticates `key` (nullopt: no key presented), authorizes `required` and charges the
  // tenant's limits. UNAUTHENTICATED for a missing or unknown key, PERMISSION_DENIED for a user
  // key where admin is required, RESOURCE_EXHAUSTED with "retry after N s" when a limit is
  // reached. Each refusal counts in dmoe_api_refusals_total{tenant, reason}.
  absl::StatusOr<Admission> Admit(std::optional<absl::string_view> key, Role required,
                                  CallKind kind);

  size_t size() const;
  const std::string& path() const { return options_.path; }

 private:
  struct FileStamp {
    int64_t mtime_ns = 0;
    int64_t size = 0;
    uint64_t inode = 0;
    bool operator==(const FileStamp&) const = default;
  };

  explicit ApiKeys(const ApiKeysOptions& options);
  absl::Time Now() const;
  void MaybeReload();
  void Install(std::vector<KeyEntry> entries) ABSL_LOCKS_EXCLUDED(mu_);
  void CountRefusal(const std::string& tenant, absl::string_view reason);

  const ApiKeysOptions options_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<KeyEntry>> entries_ ABSL_GUARDED_BY(mu_);
  // By tenant; kept across reloads so counters and slots survive a new file.
  std::map<std::string, std::shared_ptr<internal::TenantState>> tenants_ ABSL_GUARDED_BY(mu_);

  absl::Mutex file_mu_;
  FileStamp stamp_ ABSL_GUARDED_BY(file_mu_);
  absl::Time last_check_ ABSL_GUARDED_BY(file_mu_) = absl::InfinitePast();
};

}  // namespace dmoe::auth

#endif  // DMOE_COMMON_AUTH_API_KEYS_H_
