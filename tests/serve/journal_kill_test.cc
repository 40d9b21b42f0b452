// Integration: `dmoe serve --journal` SIGKILLed in the middle of a stream, restarted on the
// same journal; the client re-attaches by request id from the offset it had, and what it got
// before and after the kill concatenated equals the fault-free run (docs/operations.md
// "Scheduler journal"). Binaries come from $DMOE_BIN_DIR; children are killed on the way out.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "tests/testing/child_process.h"
#include "tests/testing/temp_dir.h"

namespace {

std::string BinDir() {
  const char* dir = std::getenv("DMOE_BIN_DIR");
  return dir ? dir : "";
}

using dmoe_testing::Child;
using dmoe_testing::RunArgv;

// The request of the test: 160 ids, one per forward (threshold 1), no stop id.
dmoe::v1::GenerateRequest Request(const std::string& id) {
  dmoe::v1::GenerateRequest request;
  request.set_request_id(id);
  for (int32_t t : {11, 22, 33, 44, 55, 66, 77}) request.mutable_prompt_ids()->add_ids(t);
  dmoe::v1::DecodingParams* p = request.mutable_params();
  p->set_max_new_tokens(160);
  p->set_threshold(1.0f);
  p->set_block_length(8);
  p->set_steps(8);
  p->mutable_stop_ids();  // set and empty: only the length limit stops it
  return request;
}

struct Streamed {
  std::vector<int32_t> ids;
  bool finished = false;
  grpc::Status status;
};

// Reads the stream; stops after `max_blocks` block events (then cancels) when > 0.
Streamed Stream(const std::string& address, const dmoe::v1::GenerateRequest& request,
                int max_blocks = 0) {
  auto stub = dmoe::v1::Generation::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub->GenerateStream(&context, request);
  Streamed out;
  dmoe::v1::GenerateStreamResponse msg;
  int blocks = 0;
  while (reader->Read(&msg)) {
    if (msg.has_block()) {
      EXPECT_EQ(msg.block().offset(), request.resume_from_offset() +
                                          static_cast<int64_t>(out.ids.size()));
      out.ids.insert(out.ids.end(), msg.block().ids().begin(), msg.block().ids().end());
      if (max_blocks > 0 && ++blocks >= max_blocks) {
        context.TryCancel();  // the caller kills the server next
        out.status = reader->Finish();
        return out;
      }
    }
    if (msg.has_final()) out.finished = true;
  }
  out.status = reader->Finish();
  return out;
}

std::string WaitListening(Child& server) {
  const std::string ready = server.ReadLine(absl::Seconds(60));
  if (ready.rfind("listening on ", 0) != 0) return "";
  return ready.substr(std::string("listening on ").size());
}

TEST(JournalKillTest, SigkilledServeResumesAndTheReattachedStreamEqualsTheFaultFreeRun) {
  const std::string bin = BinDir();
  ASSERT_FALSE(bin.empty()) << "DMOE_BIN_DIR is not set";
  dmoe_testing::TempDir tmp;
  const std::string model = tmp.Join("tiny");
  const std::string journal = tmp.Join("scheduler.journal");
  auto [make_code, make_out] =
      RunArgv({bin + "/dmoe-make-checkpoint", "--preset", "tiny", "--out", model});
  ASSERT_EQ(make_code, 0) << make_out;
  std::vector<std::string> serve = {bin + "/dmoe", "serve", "--model", model, "--listen",
                                    "127.0.0.1:0", "--threads", "1", "--journal", journal,
                                    "--journal-fsync", "always"};
  if (!std::filesystem::exists(model + "/tokenizer.json")) {
    serve.insert(serve.end(), {"--mask-id", "4000", "--stop-ids", "4001"});
  }

  std::vector<int32_t> got;
  std::vector<int32_t> reference;
  {
    Child server(serve);
    ASSERT_TRUE(server.started());
    const std::string address = WaitListening(server);
    ASSERT_FALSE(address.empty());
    const Streamed fault_free = Stream(address, Request("fault-free"));
    ASSERT_TRUE(fault_free.status.ok()) << fault_free.status.error_message();
    ASSERT_EQ(fault_free.ids.size(), 160u);
    reference = fault_free.ids;
    // Two blocks in, the server dies (no drain, no flush: SIGKILL).
    const Streamed before = Stream(address, Request("job-7"), /*max_blocks=*/2);
    ASSERT_GE(before.ids.size(), 8u);  // blocks are position-aligned: the first is short
    ASSERT_LT(before.ids.size(), 160u);
    got = before.ids;
    EXPECT_EQ(server.SignalAndWait(SIGKILL, absl::Seconds(10)), 128 + SIGKILL);
  }
  ASSERT_TRUE(std::filesystem::exists(journal));

  Child restarted(serve);
  ASSERT_TRUE(restarted.started());
  const std::string address = WaitListening(restarted);
  ASSERT_FALSE(address.empty());
  dmoe::v1::GenerateRequest again = Request("job-7");
  again.set_resume_from_offset(static_cast<int64_t>(got.size()));
  const Streamed after = Stream(address, again);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_TRUE(after.finished);
  got.insert(got.end(), after.ids.begin(), after.ids.end());
  EXPECT_EQ(got, reference) << "the re-attached stream differs from the fault-free run";
  EXPECT_EQ(restarted.SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
}

}  // namespace
