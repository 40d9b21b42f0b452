// Integration: the real dmoe-expert binary ($DMOE_BIN_DIR/dmoe-expert) as child processes on
// port 0. A generation through them equals the in-process one even when a replica is killed
// with SIGKILL mid-generation; SIGTERM drains and exits 0. Children are always reaped.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "model/cpu/make_kernels.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/transport/expert_test_util.h"
#include "transport/grpc_expert_transport.h"
#include "transport/sharded_expert_executor.h"

namespace dmoe::expert {
namespace {

namespace fs = std::filesystem;
using ::dmoe::expert_testing::Params;
using ::dmoe::expert_testing::Prompt;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// One dmoe-expert child. Its stdout/stderr go to a log file; it dies with the test process
// (PR_SET_PDEATHSIG) and is SIGKILLed and reaped on destruction if still running.
class ExpertProcess {
 public:
  ExpertProcess(const std::string& binary, const std::string& model_dir, const std::string& experts,
                const std::string& log_path)
      : log_path_(log_path) {
    std::vector<std::string> args = {binary,   "--model",  model_dir, "--experts", experts,
                                     "--listen", "127.0.0.1:0", "--threads", "1"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // Child: only async-signal-safe calls until exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~ExpertProcess() { Kill(SIGKILL); }

  pid_t pid() const { return pid_; }
  std::string log() const { return ReadFile(log_path_); }

  // Waits for "listening on 127.0.0.1:PORT" in the log; 0 on timeout or early exit.
  int WaitForPort(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    const std::string marker = "listening on 127.0.0.1:";
    while (absl::Now() < deadline) {
      const std::string text = log();
      const size_t at = text.find(marker);
      if (at != std::string::npos) {
        const size_t begin = at + marker.size();
        const size_t end = text.find('\n', begin);
        int port = 0;
        if (end != std::string::npos && absl::SimpleAtoi(text.substr(begin, end - begin), &port)) {
          return port;
        }
      }
      if (Exited()) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return 0;
  }

  // Sends `signal` and reaps the child; returns its wait status (-1 if already reaped).
  int Kill(int signal) {
    if (pid_ <= 0) return reaped_status_;
    ::kill(pid_, signal);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    reaped_status_ = status;
    return status;
  }

  // Sends `signal`, waits up to `timeout` for the exit; SIGKILLs it after that.
  int Stop(int signal, absl::Duration timeout) {
    if (pid_ <= 0) return reaped_status_;
    ::kill(pid_, signal);
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        reaped_status_ = status;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "dmoe-expert did not exit within " << timeout << " of signal " << signal;
    return Kill(SIGKILL);
  }

 private:
  bool Exited() {
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      reaped_status_ = status;
      return true;
    }
    return pid_ <= 0;
  }

  std::string log_path_;
  pid_t pid_ = -1;
  int reaped_status_ = -1;
};

class ExpertBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin_dir = std::getenv("DMOE_BIN_DIR");
    ASSERT_NE(bin_dir, nullptr) << "DMOE_BIN_DIR is not set (ctest sets it)";
    binary_ = absl::StrCat(bin_dir, "/dmoe-expert");
    ASSERT_TRUE(fs::exists(binary_)) << binary_ << " is missing: build target dmoe_expert";
    auto tiny = expert_testing::TinyModel::Create();
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    tiny_ = *std::move(tiny);
  }

  // Starts a child serving `experts` and returns a transport to it (null on failure).
  std::shared_ptr<transport::ExpertTransport> Start(const std::string& experts,
                                                    std::unique_ptr<ExpertProcess>* process) {
    const std::string log = absl::StrCat(tiny_->dir(), "/expert-", children_++, ".log");
    *process = std::make_unique<ExpertProcess>(binary_, tiny_->dir(), experts, log);
    const int port = (*process)->WaitForPort(absl::Seconds(20));
    EXPECT_GT(port, 0) << "no port in the log of dmoe-expert --experts " << experts << ":\n"
                       << (*process)->log();
    if (port <= 0) return nullptr;
    auto transport =
        transport::GrpcExpertTransport::Create({.target = absl::StrCat("127.0.0.1:", port)});
    EXPECT_TRUE(transport.ok()) << transport.status();
    return *std::move(transport);
  }

  std::string binary_;
  std::unique_ptr<expert_testing::TinyModel> tiny_;
  int children_ = 0;
};

TEST_F(ExpertBinaryTest, GenerationSurvivesSigkillOfAReplicaAndSigtermDrains) {
  std::unique_ptr<ExpertProcess> a, b, c;
  auto ta = Start("0:8", &a);
  auto tb = Start("0:8", &b);
  auto tc = Start("8:16", &c);
  ASSERT_TRUE(ta && tb && tc);

  auto executor = transport::ShardedExpertExecutor::Create(
      {.num_experts = 16, .call_timeout = absl::Seconds(10)},
      {.version = 1, .shards = {{0, 8, {ta, tb}}, {8, 16, {tc}}}});
  ASSERT_TRUE(executor.ok()) << executor.status();
  absl::Status check = (*executor)->CheckShards(tiny_->config(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(check.ok()) << check;

  auto kernels = model::MakeKernels("cpu", 2);
  ASSERT_TRUE(kernels.ok());
  model::LocalExpertExecutor local(tiny_->full_weights(), **kernels);
  const std::vector<std::vector<int32_t>> prompts = {Prompt(13, 2), Prompt(30, 5)};
  const engine::GenerationParams params = Params(0.5f, 8, 32);
  auto want = expert_testing::Generate(tiny_->full(), **kernels, local, prompts, params);
  ASSERT_TRUE(want.ok()) << want.status();

  int64_t forwards = 0;
  auto got = expert_testing::Generate(tiny_->attention(), **kernels, **executor, prompts, params,
                                      [&](int64_t forward) {
                                        forwards = forward + 1;
                                        if (forward == 2) a->Kill(SIGKILL);
                                      });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT(forwards, 4) << "the kill must happen mid-way";
  EXPECT_EQ(*want, *got);
  EXPECT_GT((*executor)->stats().failed_calls, 0) << "the dead replica was never tried";

  // SIGTERM: drain and exit 0.
  const int status = c->Stop(SIGTERM, absl::Seconds(15));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
  EXPECT_THAT(c->log(), HasSubstr("draining"));
  EXPECT_THAT(c->log(), HasSubstr("drained; exiting"));

  // Without shard [8, 16) the forward fails cleanly.
  auto logits = expert_testing::ForwardLogits(tiny_->attention(), **kernels, **executor, {Prompt(40, 1)});
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kUnavailable) << logits.status();
  EXPECT_THAT(std::string(logits.status().message()), HasSubstr("experts [8, 16)"));
}

TEST_F(ExpertBinaryTest, BadFlagsExitWithAnError) {
  const std::string log = absl::StrCat(tiny_->dir(), "/bad.log");
  ExpertProcess bad(binary_, tiny_->dir(), "12:40", log);
  const int status = bad.Stop(0, absl::Seconds(20));  // signal 0: just wait for the exit
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << "wait status " << status;
  EXPECT_THAT(bad.log(), HasSubstr("experts: [12, 40)"));
}

}  // namespace
}  // namespace dmoe::expert
