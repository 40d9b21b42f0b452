// The scheduler journal on its own: round trip, torn tails, corruption, compaction.
#include "scheduler/request_journal.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace dmoe::scheduler {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class RequestJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("dmoe_journal_test_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "journal").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  RequestJournalOptions Options(JournalFsync fsync = JournalFsync::kNever) const {
    RequestJournalOptions options;
    options.path = path_;
    options.fsync = fsync;
    return options;
  }
  std::string ReadFile() const {
    std::ifstream in(path_, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  void WriteFile(const std::string& data) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << data;
  }

  static JournaledRequest Request(const std::string& id, uint64_t seed) {
    JournaledRequest r;
    r.request_id = id;
    r.prompt = {1, 2, 3, 4000, 7};
    r.params.mode = engine::DecodeMode::kDiffusion;
    r.params.max_new_tokens = 64;
    r.params.threshold = 0.9f;
    r.params.block_length = 8;
    r.params.steps = 8;
    r.params.sampling.temperature = 0.7f;
    r.params.sampling.top_k = 5;
    r.params.sampling.top_p = 0.9f;
    r.params.sampling.seed = seed;
    r.params.mask_id = 4000;
    r.params.stop_ids = {4001, 4002};
    r.params.edit_threshold = 0.5f;
    r.params.max_post_steps = 3;
    r.deadline = absl::FromUnixSeconds(2000000000);
    return r;
  }

  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(RequestJournalTest, RoundTripKeepsLiveRequestsWithTheirBlocks) {
  {
    auto journal = RequestJournal::Open(Options(JournalFsync::kAlways));
    ASSERT_TRUE(journal.ok()) << journal.status();
    EXPECT_TRUE((*journal)->recovered().empty());
    ASSERT_TRUE((*journal)->Accept(Request("a", 11)).ok());
    ASSERT_TRUE((*journal)->Accept(Request("b", 12)).ok());
    ASSERT_TRUE((*journal)->Commit("a", 0, {10, 11}, {-0.5f, -0.25f}).ok());
    ASSERT_TRUE((*journal)->Commit("b", 0, {20}, {-1.0f}).ok());
    ASSERT_TRUE((*journal)->Commit("a", 2, {12}, {-0.125f}).ok());
    EXPECT_THAT((*journal)->Commit("a", 1, {99}, {0.0f}),
                StatusIs(absl::StatusCode::kAlreadyExists));
    EXPECT_THAT((*journal)->Commit("a", 9, {99}, {0.0f}),
                StatusIs(absl::StatusCode::kFailedPrecondition));
    ASSERT_TRUE((*journal)->End("b").ok());
    ASSERT_TRUE((*journal)->Accept(Request("c", 13)).ok());
  }
  auto journal = RequestJournal::Open(Options());
  ASSERT_TRUE(journal.ok()) << journal.status();
  const auto& live = (*journal)->recovered();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].request_id, "a");
  EXPECT_EQ(live[1].request_id, "c");
  EXPECT_THAT(live[0].ids, ElementsAre(10, 11, 12));
  EXPECT_THAT(live[0].logprobs, ElementsAre(-0.5f, -0.25f, -0.125f));
  EXPECT_TRUE(live[1].ids.empty());
  const JournaledRequest want = Request("a", 11);
  EXPECT_EQ(live[0].prompt, want.prompt);
  EXPECT_EQ(live[0].params.sampling.seed, 11u);
  EXPECT_EQ(live[0].params.sampling.temperature, 0.7f);
  EXPECT_EQ(live[0].params.sampling.top_k, 5);
  EXPECT_EQ(live[0].params.block_length, 8);
  EXPECT_EQ(live[0].params.stop_ids, want.params.stop_ids);
  EXPECT_EQ(live[0].params.edit_threshold, std::optional<float>(0.5f));
  EXPECT_EQ(live[0].params.max_post_steps, 3);
  EXPECT_EQ(live[0].deadline, want.deadline);
  EXPECT_EQ(internal::EncodeAccept(live[1]), internal::EncodeAccept(Request("c", 13)));
  // The reopened journal appends after what it read.
  ASSERT_TRUE((*journal)->Commit("c", 0, {5}, {-2.0f}).ok());
}

TEST_F(RequestJournalTest, TornTailIsTruncatedOnOpen) {
  int64_t whole = 0;
  {
    auto journal = RequestJournal::Open(Options());
    ASSERT_TRUE(journal.ok());
    ASSERT_TRUE((*journal)->Accept(Request("a", 1)).ok());
    ASSERT_TRUE((*journal)->Commit("a", 0, {10, 11}, {-0.5f, -0.25f}).ok());
    whole = (*journal)->Stats().file_bytes;
    ASSERT_TRUE((*journal)->Commit("a", 2, {12, 13}, {-0.5f, -0.25f}).ok());
  }
  const std::string full = ReadFile();
  // Every cut inside the last record: the record is dropped, the rest kept.
  for (size_t cut = static_cast<size_t>(whole) + 1; cut < full.size(); cut += 3) {
    WriteFile(full.substr(0, cut));
    auto journal = RequestJournal::Open(Options());
    ASSERT_TRUE(journal.ok()) << "cut at " << cut << ": " << journal.status();
    ASSERT_EQ((*journal)->recovered().size(), 1u);
    EXPECT_THAT((*journal)->recovered()[0].ids, ElementsAre(10, 11));
    EXPECT_EQ((*journal)->Stats().truncated_bytes, static_cast<int64_t>(cut) - whole);
    EXPECT_EQ((*journal)->Stats().file_bytes, whole);
  }
  EXPECT_EQ(static_cast<int64_t>(ReadFile().size()), whole);
  // A last record of the right length whose bytes did not all reach the disk (zeros).
  std::string zeroed = full;
  for (size_t i = full.size() - 4; i < full.size(); ++i) zeroed[i] = '\0';
  WriteFile(zeroed);
  auto journal = RequestJournal::Open(Options());
  ASSERT_TRUE(journal.ok()) << journal.status();
  EXPECT_THAT((*journal)->recovered()[0].ids, ElementsAre(10, 11));
}

TEST_F(RequestJournalTest, CrcMismatchBeforeTheTailIsDataLossNamingFileAndOffset) {
  int64_t second_record = 0;
  {
    auto journal = RequestJournal::Open(Options());
    ASSERT_TRUE(journal.ok());
    ASSERT_TRUE((*journal)->Accept(Request("a", 1)).ok());
    second_record = (*journal)->Stats().file_bytes;
    ASSERT_TRUE((*journal)->Commit("a", 0, {10, 11}, {-0.5f, -0.25f}).ok());
    ASSERT_TRUE((*journal)->Commit("a", 2, {12}, {-0.5f}).ok());
  }
  std::string data = ReadFile();
  data[static_cast<size_t>(second_record) + 12] ^= 0x40;  // a payload byte of the first commit
  WriteFile(data);
  EXPECT_THAT(RequestJournal::Open(Options()).status(),
              StatusIs(absl::StatusCode::kDataLoss,
                       testing::AllOf(HasSubstr(path_),
                                      HasSubstr(absl::StrCat("offset ", second_record)),
                                      HasSubstr("CRC32C"))));
  // Not a journal at all.
  WriteFile("hello world, not a journal");
  EXPECT_THAT(RequestJournal::Open(Options()).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("not a dmoe journal")));
}

TEST_F(RequestJournalTest, CompactionKeepsTheLiveSetAndShrinksTheFile) {
  RequestJournalOptions options = Options(JournalFsync::kInterval);
  options.fsync_interval = absl::Milliseconds(5);
  options.compact_min_bytes = 2000;
  {
    auto journal = RequestJournal::Open(options);
    ASSERT_TRUE(journal.ok());
    ASSERT_TRUE((*journal)->Accept(Request("keep", 1)).ok());
    ASSERT_TRUE((*journal)->Commit("keep", 0, {1, 2}, {-1.0f, -2.0f}).ok());
    for (int i = 0; i < 40; ++i) {
      const std::string id = absl::StrCat("done-", i);
      ASSERT_TRUE((*journal)->Accept(Request(id, 100 + i)).ok());
      ASSERT_TRUE((*journal)->Commit(id, 0, {1, 2, 3, 4}, {0, 0, 0, 0}).ok());
      ASSERT_TRUE((*journal)->End(id).ok());
    }
    ASSERT_TRUE((*journal)->Commit("keep", 2, {3}, {-3.0f}).ok());
    const RequestJournalStats stats = (*journal)->Stats();
    EXPECT_GE(stats.compactions, 1);
    EXPECT_LT(stats.file_bytes, 2000 + 400);
    EXPECT_EQ(stats.live_requests, 1);
    EXPECT_FALSE(std::filesystem::exists(path_ + ".compact"));
  }
  auto journal = RequestJournal::Open(Options());
  ASSERT_TRUE(journal.ok()) << journal.status();
  ASSERT_EQ((*journal)->recovered().size(), 1u);
  EXPECT_EQ((*journal)->recovered()[0].request_id, "keep");
  EXPECT_THAT((*journal)->recovered()[0].ids, ElementsAre(1, 2, 3));
  EXPECT_THAT((*journal)->recovered()[0].logprobs, ElementsAre(-1.0f, -2.0f, -3.0f));
}

TEST_F(RequestJournalTest, ObserversSeeEveryRecordAndEveryFsync) {
  RequestJournalOptions options = Options(JournalFsync::kAlways);
  std::map<std::string, int> records;
  int64_t bytes = 0;
  int syncs = 0;
  options.on_record = [&](const char* type, int64_t n) {
    ++records[type];
    bytes += n;
  };
  options.on_sync = [&](absl::Duration took) {
    EXPECT_GE(took, absl::ZeroDuration());
    ++syncs;
  };
  {
    auto journal = RequestJournal::Open(options);
    ASSERT_TRUE(journal.ok()) << journal.status();
    ASSERT_TRUE((*journal)->Accept(Request("a", 1)).ok());
    ASSERT_TRUE((*journal)->Commit("a", 0, {10, 11}, {-0.5f, -0.25f}).ok());
    ASSERT_TRUE((*journal)->Commit("a", 2, {12}, {-0.125f}).ok());
    ASSERT_TRUE((*journal)->End("a").ok());
  }
  EXPECT_EQ(records, (std::map<std::string, int>{{"accept", 1}, {"commit", 2}, {"end", 1}}));
  // Everything after the 8-byte magic was reported.
  EXPECT_EQ(bytes + 8, static_cast<int64_t>(ReadFile().size()));
  EXPECT_EQ(syncs, 4);  // --journal-fsync always: one per record
}

TEST_F(RequestJournalTest, OptionsAndFsyncNames) {
  EXPECT_THAT(ParseJournalFsync("sometimes", "--journal-fsync").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--journal-fsync")));
  EXPECT_EQ(*ParseJournalFsync("always", "f"), JournalFsync::kAlways);
  EXPECT_EQ(JournalFsyncName(JournalFsync::kInterval), "interval");
  RequestJournalOptions options;
  EXPECT_THAT(options.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  // CRC-32C check value of "123456789".
  EXPECT_EQ(internal::Crc32c("123456789"), 0xE3069283u);
}

}  // namespace
}  // namespace dmoe::scheduler
