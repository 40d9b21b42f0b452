// Integration: the C++ client (GenerationClient with a RetryPolicy) survives a lost router or
// scheduler in the middle of a stream, with real processes on loopback: `dmoe serve --journal`
// on the committed tiny diffusion model, and two `dmoe-router`s in front of it. The client's
// ids and text must equal an uninterrupted run, every block arriving once and in order
// (docs/operations.md "Scheduler journal", clients/cpp/README.md). And `dmoe client
// --fallback-target` reaching the fallback when --server is down. Binaries come from
// $DMOE_BIN_DIR; children are killed on the way out.
#include <signal.h>

#include <cstdlib>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/generation_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"
#include "tests/testing/temp_dir.h"

namespace dmoe {
namespace {

using dmoe_testing::Child;
using dmoe_testing::RunArgv;
using ::testing::SizeIs;

std::string BinDir() {
  const char* dir = std::getenv("DMOE_BIN_DIR");
  return dir ? dir : "";
}

// "listening on HOST:PORT" anywhere in the next lines (a log prefix is allowed); "" if the
// process did not start, exits or says nothing in time.
std::string WaitListening(Child& child) {
  if (!child.started()) return "";
  static const std::regex kListening("listening on ([0-9.]+:[0-9]+)");
  const absl::Time end = absl::Now() + absl::Seconds(60);
  while (absl::Now() < end) {
    const std::string line = child.ReadLine(end - absl::Now());
    if (line.empty()) return "";
    std::smatch m;
    if (std::regex_search(line, m, kListening)) return m[1];
  }
  return "";
}

std::vector<std::string> ServeArgv(const std::string& journal, const std::string& listen) {
  return {BinDir() + "/dmoe", "serve",     "--model",         DMOE_TINY_DIFFUSION_DIR,
          "--listen",         listen,      "--threads",       "1",
          "--journal",        journal,     "--journal-fsync", "always"};
}

// A router's log goes to stderr: through a shell that joins it to stdout, which Child reads
// (exec: the pid is the router's, so SIGKILL hits it).
std::vector<std::string> RouterArgv(const std::string& backend) {
  return {"/bin/sh", "-c",
          absl::StrCat("exec '", BinDir(), "/dmoe-router' --backend ", backend,
                       " --listen 127.0.0.1:0 2>&1")};
}

// 6 blocks of 32 (the model's block length), no stop id: only the length ends it.
dmoe::v1::GenerateRequest Request(const std::string& id) {
  dmoe::v1::GenerateRequest request;
  request.set_request_id(id);
  dmoe::v1::ChatMessage* m = request.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Tell me a fortune.");
  request.mutable_params()->set_max_new_tokens(192);
  request.mutable_params()->mutable_stop_ids();  // set and empty
  return request;
}

struct Streamed {
  std::vector<int32_t> ids;
  std::string text;
  int blocks = 0;
  std::vector<int64_t> bad_offsets;  // blocks that did not start where the previous one ended
  absl::Status status;
};

// Streams `request`; `after_first_block` runs in the callback of the first block (the test
// kills a process there, so the stream is sure to break in the middle).
Streamed Stream(client::GenerationClient& client, const dmoe::v1::GenerateRequest& request,
                const std::function<void()>& after_first_block = nullptr) {
  Streamed out;
  absl::StatusOr<dmoe::v1::FinalEvent> final_event = client.GenerateStream(
      request, [&](const dmoe::v1::GenerateStreamResponse& event) {
        if (!event.has_block()) return true;
        if (event.block().offset() != static_cast<int64_t>(out.ids.size())) {
          out.bad_offsets.push_back(event.block().offset());
        }
        out.ids.insert(out.ids.end(), event.block().ids().begin(), event.block().ids().end());
        out.text += event.block().text();
        if (++out.blocks == 1 && after_first_block) after_first_block();
        return true;
      });
  out.status = final_event.status();
  if (final_event.ok()) out.text += final_event->text();
  return out;
}

std::unique_ptr<client::GenerationClient> Client(const std::string& target,
                                                 std::vector<std::string> fallbacks = {}) {
  client::ClientOptions options{.target = target, .fallback_targets = std::move(fallbacks)};
  options.timeout = absl::Seconds(50);
  options.retry.max_attempts = 1000;
  options.retry.max_retry_time = absl::Seconds(40);
  options.retry.max_backoff = absl::Milliseconds(500);
  auto client = client::GenerationClient::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

class ClientFailoverTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(BinDir().empty()) << "DMOE_BIN_DIR is not set"; }

  // The uninterrupted run, straight to the server, with the same request under another id.
  Streamed Reference(const std::string& address) {
    auto client = Client(address);
    Streamed reference = Stream(*client, Request("reference"));
    EXPECT_TRUE(reference.status.ok()) << reference.status;
    EXPECT_THAT(reference.ids, SizeIs(192));
    EXPECT_GE(reference.blocks, 3);
    return reference;
  }

  static void ExpectSame(const Streamed& got, const Streamed& reference) {
    ASSERT_TRUE(got.status.ok()) << got.status;
    EXPECT_EQ(got.ids, reference.ids) << "the resumed stream differs from the fault-free run";
    EXPECT_EQ(got.text, reference.text);
    EXPECT_THAT(got.bad_offsets, SizeIs(0)) << "a block was repeated or skipped";
    EXPECT_FALSE(got.text.empty()) << "the model has a tokenizer: text is expected";
  }

  // `dmoe serve --journal` and a dmoe-router in front of it; reference_ is the fault-free run
  // straight to serve.
  void StartServeBehindRouter() {
    journal_ = tmp_.Join("scheduler.journal");
    serve_ = std::make_unique<Child>(ServeArgv(journal_, "127.0.0.1:0"));
    serve_address_ = WaitListening(*serve_);
    ASSERT_FALSE(serve_address_.empty());
    router_ = std::make_unique<Child>(RouterArgv(serve_address_));
    router_address_ = WaitListening(*router_);
    ASSERT_FALSE(router_address_.empty());
    reference_ = Reference(serve_address_);
  }
  // SIGKILL, then the same server on the same journal and port.
  void KillAndRestartServe() {
    EXPECT_EQ(serve_->SignalAndWait(SIGKILL, absl::Seconds(10)), 128 + SIGKILL);
    serve_ = std::make_unique<Child>(ServeArgv(journal_, serve_address_));
    EXPECT_EQ(WaitListening(*serve_), serve_address_);
  }

  dmoe_testing::TempDir tmp_;
  std::string journal_, serve_address_, router_address_;
  std::unique_ptr<Child> serve_, router_;
  Streamed reference_;
};

TEST_F(ClientFailoverTest, RouterKilledMidStreamTheClientGoesOnThroughTheOtherRouter) {
  Child serve(ServeArgv(tmp_.Join("scheduler.journal"), "127.0.0.1:0"));
  const std::string scheduler = WaitListening(serve);
  ASSERT_FALSE(scheduler.empty());
  Child router_a(RouterArgv(scheduler));
  Child router_b(RouterArgv(scheduler));
  const std::string a = WaitListening(router_a);
  const std::string b = WaitListening(router_b);
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  const Streamed reference = Reference(scheduler);

  auto client = Client(a, {b});
  ASSERT_NE(client, nullptr);
  int killed = -1;
  const Streamed got = Stream(*client, Request("through-routers"), [&] {
    killed = router_a.SignalAndWait(SIGKILL, absl::Seconds(10));
  });
  EXPECT_EQ(killed, 128 + SIGKILL);
  ExpectSame(got, reference);
  EXPECT_EQ(router_b.SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
  EXPECT_EQ(serve.SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
}

TEST_F(ClientFailoverTest, ServeKilledAndRestartedOnItsPortTheClientReattaches) {
  const std::string journal = tmp_.Join("scheduler.journal");
  auto serve = std::make_unique<Child>(ServeArgv(journal, "127.0.0.1:0"));
  const std::string address = WaitListening(*serve);
  ASSERT_FALSE(address.empty());
  const Streamed reference = Reference(address);

  // The client is held in its callback while the server is SIGKILLed; it then retries a dead
  // port (backoff) until the restarted server, on the same journal and port, answers.
  absl::Notification first_block, killed;
  auto client = Client(address);
  ASSERT_NE(client, nullptr);
  Streamed got;
  std::thread caller([&] {
    got = Stream(*client, Request("across-restart"), [&] {
      first_block.Notify();
      killed.WaitForNotificationWithTimeout(absl::Seconds(30));
    });
  });
  const bool streaming = first_block.WaitForNotificationWithTimeout(absl::Seconds(30));
  EXPECT_TRUE(streaming);
  EXPECT_EQ(serve->SignalAndWait(SIGKILL, absl::Seconds(10)), 128 + SIGKILL);
  killed.Notify();
  absl::SleepFor(absl::Milliseconds(300));  // a few refused connections first
  serve = std::make_unique<Child>(ServeArgv(journal, address));
  EXPECT_EQ(WaitListening(*serve), address);
  caller.join();
  ExpectSame(got, reference);
  EXPECT_EQ(serve->SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
}

TEST_F(ClientFailoverTest, ServeKilledBehindARouterTheClientReattachesThroughIt) {
  // The router relays its backend's loss as UNAVAILABLE, so the client retries through the
  // same router, which reaches the restarted server.
  StartServeBehindRouter();
  if (HasFatalFailure()) return;
  auto client = Client(router_address_);
  ASSERT_NE(client, nullptr);
  const Streamed got =
      Stream(*client, Request("behind-a-router"), [&] { KillAndRestartServe(); });
  ExpectSame(got, reference_);
  EXPECT_EQ(router_->SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
  EXPECT_EQ(serve_->SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
}

// The router itself re-attaches (router/stream_relay.h): a client that never retries streams
// through it while the server behind it is SIGKILLed and restarted on its journal and port,
// and sees one unbroken stream with the fault-free ids. The router logs the re-attach.
TEST_F(ClientFailoverTest, ServeKilledBehindARouterTheRouterReattachesAClientThatNeverRetries) {
  StartServeBehindRouter();
  if (HasFatalFailure()) return;
  client::ClientOptions options{.target = router_address_};
  options.timeout = absl::Seconds(50);  // RetryPolicy's default: one try, never retried
  auto client = client::GenerationClient::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const Streamed got =
      Stream(**client, Request("router-reattaches"), [&] { KillAndRestartServe(); });
  ExpectSame(got, reference_);

  EXPECT_EQ(router_->SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
  std::string log, line;
  while (!(line = router_->ReadLine(absl::Seconds(1))).empty()) log += line + "\n";
  EXPECT_NE(log.find("re-attaching at offset"), std::string::npos) << log;
  EXPECT_EQ(serve_->SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
}

// With --reattach-timeout-s 0 the loss is the caller's error, as before.
TEST_F(ClientFailoverTest, RouterWithoutReattachRelaysTheLoss) {
  Child serve(ServeArgv(tmp_.Join("scheduler.journal"), "127.0.0.1:0"));
  const std::string address = WaitListening(serve);
  ASSERT_FALSE(address.empty());
  Child router({"/bin/sh", "-c",
                absl::StrCat("exec '", BinDir(), "/dmoe-router' --backend ", address,
                             " --reattach-timeout-s 0 --listen 127.0.0.1:0 2>&1")});
  const std::string router_address = WaitListening(router);
  ASSERT_FALSE(router_address.empty());
  client::ClientOptions options{.target = router_address};
  options.timeout = absl::Seconds(50);
  auto client = client::GenerationClient::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const Streamed got = Stream(**client, Request("no-reattach"), [&] {
    EXPECT_EQ(serve.SignalAndWait(SIGKILL, absl::Seconds(10)), 128 + SIGKILL);
  });
  EXPECT_EQ(got.status.code(), absl::StatusCode::kUnavailable) << got.status;
  EXPECT_EQ(router.SignalAndWait(SIGTERM, absl::Seconds(30)), 0);
}

// `dmoe client` wiring: --fallback-target is where a call goes when --server is down.
TEST_F(ClientFailoverTest, DmoeClientGoesToTheFallbackTargetWhenTheServerIsDown) {
  Child serve(ServeArgv(tmp_.Join("scheduler.journal"), "127.0.0.1:0"));
  const std::string scheduler = WaitListening(serve);
  ASSERT_FALSE(scheduler.empty());
  Child dead(RouterArgv(scheduler));
  const std::string dead_address = WaitListening(dead);
  ASSERT_FALSE(dead_address.empty());
  ASSERT_EQ(dead.SignalAndWait(SIGKILL, absl::Seconds(10)), 128 + SIGKILL);
  Child router(RouterArgv(scheduler));
  const std::string router_address = WaitListening(router);
  ASSERT_FALSE(router_address.empty());

  auto generate = [](std::vector<std::string> targets) {
    std::vector<std::string> argv = {BinDir() + "/dmoe", "client", "generate", "--chat",
                                     "Tell me a fortune.", "--max-new-tokens", "64", "--json",
                                     "--server", targets[0]};
    for (size_t i = 1; i < targets.size(); ++i) {
      argv.insert(argv.end(), {"--fallback-target", targets[i]});
    }
    return RunArgv(argv);
  };
  // The ids (and text) of the --json line, without the timings.
  auto ids = [](const std::string& json) {
    std::smatch m;
    static const std::regex kIds("\"ids\":\\[[0-9,]*\\]");
    return std::regex_search(json, m, kIds) ? m.str() : "";
  };
  const auto [reference_code, reference] = generate({scheduler});
  ASSERT_EQ(reference_code, 0) << reference;
  ASSERT_FALSE(ids(reference).empty()) << reference;
  const auto [code, out] = generate({dead_address, router_address});
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(ids(out), ids(reference));
  // Without a fallback (and so without retries) the dead server is an error.
  EXPECT_NE(generate({dead_address}).first, 0);
}

}  // namespace
}  // namespace dmoe
