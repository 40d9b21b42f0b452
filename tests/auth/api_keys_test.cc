#include "common/auth/api_keys.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/catalog.h"
#include "prometheus/registry.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::auth {
namespace {

using dmoe_testing::IsOk;
using dmoe_testing::StatusIs;
using ::testing::HasSubstr;

std::string Line(const std::string& name, const std::string& role, const std::string& key,
                 const std::string& limits = "") {
  return absl::StrCat(name, " ", role, " ", HexDigest(Sha256(key)), limits.empty() ? "" : " ",
                      limits, "\n");
}

// A clock the test moves by hand.
struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1000);
  std::function<absl::Time()> fn() {
    return [this] { return now; };
  }
};

TEST(Sha256Test, KnownVector) {
  EXPECT_EQ(HexDigest(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, DigestsEqualComparesWholeDigest) {
  Sha256Digest a = Sha256("x"), b = a;
  EXPECT_TRUE(DigestsEqual(a, b));
  b[31] ^= 1;  // differs only in the last byte
  EXPECT_FALSE(DigestsEqual(a, b));
  b = a;
  b[0] ^= 1;
  EXPECT_FALSE(DigestsEqual(a, b));
}

TEST(ParseKeysFileTest, ParsesRolesLimitsAndComments) {
  const std::string text = absl::StrCat("# tenants\n\n", Line("acme", "user", "k1", "rps=2.5 streams=3 tpm=1000"),
                                        "  ", Line("ops", "admin", "k2"), "\t# trailing\n");
  absl::StatusOr<std::vector<KeyEntry>> entries = ParseKeysFile(text, "keys");
  ASSERT_THAT(entries.status(), IsOk());
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].tenant, "acme");
  EXPECT_EQ((*entries)[0].role, Role::kUser);
  EXPECT_TRUE(DigestsEqual((*entries)[0].hash, Sha256("k1")));
  EXPECT_DOUBLE_EQ((*entries)[0].limits.requests_per_second, 2.5);
  EXPECT_EQ((*entries)[0].limits.max_streams, 3);
  EXPECT_EQ((*entries)[0].limits.tokens_per_minute, 1000);
  EXPECT_EQ((*entries)[1].role, Role::kAdmin);
  EXPECT_EQ((*entries)[1].limits.max_streams, 0);
}

TEST(ParseKeysFileTest, ErrorsNameTheLine) {
  const std::string good = Line("a", "user", "k1");
  const std::string hash = HexDigest(Sha256("k2"));
  struct Case {
    std::string bad_line;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"b user\n", "expected NAME ROLE SHA256HEX"},
           {"b root " + hash + "\n", "role must be user or admin"},
           {"b user dmoe-plaintext-key\n", "64 hex digits"},
           {"b user " + hash.substr(1) + "z\n", "64 hex digits"},
           {"b user " + hash + " rps=-1\n", "N >= 0"},
           {"b user " + hash + " streams=1.5\n", "whole number"},
           {"b user " + hash + " qps=3\n", "unknown limit 'qps'"},
           {Line("b", "user", "k1"), "appears twice"},
       }) {
    EXPECT_THAT(ParseKeysFile(good + "# x\n" + c.bad_line, "/etc/keys").status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr("/etc/keys:3: "), HasSubstr(c.message))))
        << c.bad_line;
  }
}

TEST(GenerateKeyTest, FreshKeysMatchTheirLine) {
  absl::StatusOr<GeneratedKey> a = GenerateKey("acme", Role::kAdmin);
  absl::StatusOr<GeneratedKey> b = GenerateKey("acme", Role::kAdmin);
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_NE(a->key, b->key);
  EXPECT_TRUE(a->key.starts_with("dmoe-"));
  EXPECT_EQ(a->key.size(), 5u + 43u);  // 32 bytes as unpadded base64url
  EXPECT_EQ(a->line, "acme admin " + HexDigest(Sha256(a->key)));
  EXPECT_EQ(a->line.find(a->key), std::string::npos);  // the line never holds the key
  absl::StatusOr<std::vector<KeyEntry>> parsed = ParseKeysFile(a->line, "x");
  ASSERT_THAT(parsed.status(), IsOk());
  EXPECT_THAT(GenerateKey("two words", Role::kUser).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

class ApiKeysTest : public ::testing::Test {
 protected:
  std::unique_ptr<ApiKeys> Load(const std::string& text) {
    path_ = dir_.Join("keys");
    dmoe_testing::WriteFileOrDie(path_, text);
    ApiKeysOptions options;
    options.path = path_;
    options.refusals = &metrics::CounterFamily(*registry_, "dmoe_api_refusals_total", "v1");
    options.clock = clock_.fn();
    absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(options);
    EXPECT_THAT(keys.status(), IsOk());
    return keys.ok() ? *std::move(keys) : nullptr;
  }
  double Refusals(const std::string& tenant, const std::string& reason) {
    for (const auto& family : registry_->Collect()) {
      if (family.name != "dmoe_api_refusals_total") continue;
      for (const auto& metric : family.metric) {
        std::map<std::string, std::string> labels;
        for (const auto& l : metric.label) labels[l.name] = l.value;
        if (labels["tenant"] == tenant && labels["reason"] == reason) {
          return metric.counter.value;
        }
      }
    }
    return 0;
  }

  dmoe_testing::TempDir dir_;
  std::string path_;
  FakeClock clock_;
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
};

TEST_F(ApiKeysTest, AuthenticatesAndAuthorizes) {
  auto keys = Load(Line("acme", "user", "user-key") + Line("ops", "admin", "admin-key"));
  EXPECT_THAT(keys->Admit(std::nullopt, Role::kUser, CallKind::kOther).status(),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(keys->Admit("wrong", Role::kUser, CallKind::kOther).status(),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(keys->Admit("user-key", Role::kAdmin, CallKind::kOther).status(),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("acme")));
  absl::StatusOr<Admission> user = keys->Admit("user-key", Role::kUser, CallKind::kOther);
  ASSERT_THAT(user.status(), IsOk());
  EXPECT_EQ(user->tenant(), "acme");
  absl::StatusOr<Admission> admin = keys->Admit("admin-key", Role::kAdmin, CallKind::kOther);
  ASSERT_THAT(admin.status(), IsOk());
  EXPECT_EQ(admin->tenant(), "ops");
  EXPECT_THAT(keys->Admit("admin-key", Role::kUser, CallKind::kOther).status(), IsOk());
  EXPECT_EQ(Refusals("", "unauthenticated"), 2);
  EXPECT_EQ(Refusals("acme", "permission_denied"), 1);
}

TEST_F(ApiKeysTest, ReloadsWhenTheFileChanges) {
  auto keys = Load(Line("acme", "user", "old-key"));
  ASSERT_THAT(keys->Admit("old-key", Role::kUser, CallKind::kOther).status(), IsOk());
  // Another size, so the change shows even within the file system's mtime granularity.
  dmoe_testing::WriteFileOrDie(path_ + ".new", Line("acme", "user", "new-key") + "# rotated\n");
  ASSERT_EQ(rename((path_ + ".new").c_str(), path_.c_str()), 0);
  // Not yet: the file is checked at most once per check_interval.
  EXPECT_THAT(keys->Admit("old-key", Role::kUser, CallKind::kOther).status(), IsOk());
  clock_.now += absl::Seconds(2);
  EXPECT_THAT(keys->Admit("new-key", Role::kUser, CallKind::kOther).status(), IsOk());
  EXPECT_THAT(keys->Admit("old-key", Role::kUser, CallKind::kOther).status(),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // A broken file keeps the last good keys.
  dmoe_testing::WriteFileOrDie(path_, "acme user not-a-hash\n");
  clock_.now += absl::Seconds(2);
  EXPECT_THAT(keys->Admit("new-key", Role::kUser, CallKind::kOther).status(), IsOk());
  EXPECT_THAT(keys->Reload(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(":1: ")));
  // An explicit Reload (what SIGHUP would do) picks up a fixed file at once.
  dmoe_testing::WriteFileOrDie(path_, Line("acme", "user", "third-key"));
  EXPECT_THAT(keys->Reload(), IsOk());
  EXPECT_THAT(keys->Admit("third-key", Role::kUser, CallKind::kOther).status(), IsOk());
}

TEST_F(ApiKeysTest, RequestsPerSecondTokenBucket) {
  auto keys = Load(Line("acme", "user", "k", "rps=2"));
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kOther).status(), IsOk());
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kOther).status(), IsOk());
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kOther).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("retry after 0.5 s")));
  clock_.now += absl::Milliseconds(500);
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kOther).status(), IsOk());
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kOther).status(),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(Refusals("acme", "rate"), 2);
}

TEST_F(ApiKeysTest, ConcurrentStreams) {
  auto keys = Load(Line("acme", "user", "k", "streams=2"));
  absl::StatusOr<Admission> a = keys->Admit("k", Role::kUser, CallKind::kGeneration);
  absl::StatusOr<Admission> b = keys->Admit("k", Role::kUser, CallKind::kGeneration);
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT(b.status(), IsOk());
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kGeneration).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("2 of 2 concurrent")));
  // Tokenize and ListModels take no stream slot.
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kOther).status(), IsOk());
  *a = Admission();  // the first call ends
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kGeneration).status(), IsOk());
  EXPECT_EQ(Refusals("acme", "streams"), 1);
}

TEST_F(ApiKeysTest, TokensPerMinute) {
  auto keys = Load(Line("acme", "user", "k", "tpm=600"));
  {
    absl::StatusOr<Admission> a = keys->Admit("k", Role::kUser, CallKind::kGeneration);
    ASSERT_THAT(a.status(), IsOk());
    a->AddTokens(700);  // charged after the fact: the budget goes to -100
  }
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kGeneration).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("tokens per minute")));
  clock_.now += absl::Seconds(11);  // 10 tokens/s refill: +110
  EXPECT_THAT(keys->Admit("k", Role::kUser, CallKind::kGeneration).status(), IsOk());
  EXPECT_EQ(Refusals("acme", "tokens"), 1);
}

TEST_F(ApiKeysTest, KeysOfOneTenantShareItsLimits) {
  auto keys = Load(Line("acme", "user", "k1", "streams=1") + Line("acme", "user", "k2", "streams=1"));
  absl::StatusOr<Admission> a = keys->Admit("k1", Role::kUser, CallKind::kGeneration);
  ASSERT_THAT(a.status(), IsOk());
  EXPECT_THAT(keys->Admit("k2", Role::kUser, CallKind::kGeneration).status(),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(ApiKeysTest, MissingFileIsAnError) {
  ApiKeysOptions options;
  options.path = dir_.Join("absent");
  EXPECT_THAT(ApiKeys::Load(options).status(), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace dmoe::auth
