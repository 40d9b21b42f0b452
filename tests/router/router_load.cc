// dmoe-router-load: opens --streams GenerateStream calls at once against a Generation server
// (the router, in scripts/load-router), all on the gRPC callback API (a handful of threads for
// any number of streams: the generator must not be the thing that runs out of threads), waits
// for every one to end and checks each ended OK with its final event. With --pid it samples
// that process's /proc/PID/status (Threads, VmRSS) every --sample-ms while the streams run, and
// once before they start (idle), and reports the peaks, per round of --streams (--rounds: a
// router whose memory grew round after round would be leaking). Every request is the same chat
// message with the stop tokens cleared, so each stream generates exactly --max-new-tokens.
//
//   dmoe-router-load --server 127.0.0.1:PORT --streams 1000 --rounds 3 --pid ROUTER_PID [--json]
//
// Exit status 0 when every stream completed, 1 when any did not, 2 on bad flags.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"

namespace {

// One /proc/PID/status reading; nullopt when the process is gone.
struct ProcessSample {
  int64_t threads = 0;
  int64_t rss_kib = 0;
  int64_t hwm_kib = 0;  // VmHWM: the kernel's own RSS peak over the process's life
};

std::optional<ProcessSample> ReadStatus(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  if (!in) return std::nullopt;
  ProcessSample sample;
  std::string line;
  auto field = [&line](const char* name, int64_t* out) {
    const std::string prefix = absl::StrCat(name, ":");
    if (line.rfind(prefix, 0) != 0) return;
    std::string value = line.substr(prefix.size());
    value.erase(0, value.find_first_not_of(" \t"));
    value = value.substr(0, value.find_first_of(" \t"));
    (void)absl::SimpleAtoi(value, out);
  };
  while (std::getline(in, line)) {
    field("Threads", &sample.threads);
    field("VmRSS", &sample.rss_kib);
    field("VmHWM", &sample.hwm_kib);
  }
  return sample;
}

// Samples a process until stopped, keeping the peaks.
class Sampler {
 public:
  Sampler(int pid, absl::Duration every) : pid_(pid), every_(every) {
    thread_ = std::thread([this] { Run(); });
  }
  ~Sampler() { Stop(); }
  void Stop() {
    if (!thread_.joinable()) return;
    stop_.Notify();
    thread_.join();
  }
  ProcessSample peak() const { return peak_; }  // after Stop
  int64_t samples() const { return samples_; }  // after Stop

 private:
  void Run() {
    do {
      if (std::optional<ProcessSample> s = ReadStatus(pid_)) {
        peak_.threads = std::max(peak_.threads, s->threads);
        peak_.rss_kib = std::max(peak_.rss_kib, s->rss_kib);
        peak_.hwm_kib = std::max(peak_.hwm_kib, s->hwm_kib);
        ++samples_;
      }
    } while (!stop_.WaitForNotificationWithTimeout(every_));
  }

  const int pid_;
  const absl::Duration every_;
  absl::Notification stop_;
  ProcessSample peak_;
  int64_t samples_ = 0;
  std::thread thread_;
};

// The outcome of every stream, filled from the reactors' threads.
class Tally {
 public:
  explicit Tally(int streams) : pending_(streams) {}
  void Done(const grpc::Status& status, int64_t blocks, int64_t tokens, bool final)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (status.ok() && final) {
      ++completed_;
      blocks_ += blocks;
      tokens_ += tokens;
    } else {
      ++failed_;
      const std::string key = status.ok() ? "OK without a final event"
                                          : absl::StrCat(status.error_code(), ": ",
                                                         status.error_message());
      ++failures_[key];
    }
    --pending_;
  }
  void WaitAll() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Tally::AllDone));
  }
  int64_t completed() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return completed_;
  }
  int64_t failed() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return failed_;
  }
  int64_t tokens() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return tokens_;
  }
  int64_t blocks() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return blocks_;
  }
  std::map<std::string, int64_t> failures() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return failures_;
  }

 private:
  bool AllDone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; }

  absl::Mutex mu_;
  int64_t pending_ ABSL_GUARDED_BY(mu_);
  int64_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t blocks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> failures_ ABSL_GUARDED_BY(mu_);
};

// One stream, read to its end; deletes itself.
class Stream final : public grpc::ClientReadReactor<dmoe::v1::GenerateStreamResponse> {
 public:
  Stream(dmoe::v1::Generation::Stub* stub, const dmoe::v1::GenerateRequest& request,
         absl::Duration deadline, Tally* tally)
      : request_(request), tally_(tally) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    stub->async()->GenerateStream(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (event_.has_block()) {
      ++blocks_;
      tokens_ += event_.block().ids_size();
    }
    if (event_.has_final()) final_ = true;
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& status) override {
    tally_->Done(status, blocks_, tokens_, final_);
    delete this;
  }

 private:
  grpc::ClientContext context_;
  const dmoe::v1::GenerateRequest request_;
  dmoe::v1::GenerateStreamResponse event_;
  Tally* const tally_;
  int64_t blocks_ = 0;
  int64_t tokens_ = 0;
  bool final_ = false;
};

std::string Kib(int64_t kib) {
  return absl::StrCat(kib / 1024, ".", (kib % 1024) * 10 / 1024, " MiB");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Open N concurrent GenerateStream calls (gRPC callback API) against a Generation "
               "server and report completions and a process's threads and RSS"};
  std::string server;
  int streams = 1000;
  int64_t max_new_tokens = 32;
  std::string chat = "Copy this list:\nbird\nlake\ngold\nsnow\nking";
  double deadline_seconds = 900;
  int pid = 0;
  int sample_ms = 20;
  int channels = 1;
  int rounds = 1;
  bool json = false;
  app.add_option("--server", server, "host:port of the Generation API (the router)")->required();
  app.add_option("--streams", streams, "Streams opened at once")->capture_default_str();
  app.add_option("--max-new-tokens", max_new_tokens, "Per stream")->capture_default_str();
  app.add_option("--chat", chat, "The user message of every request")->capture_default_str();
  app.add_option("--deadline-seconds", deadline_seconds, "Per-stream deadline")
      ->capture_default_str();
  app.add_option("--channels", channels,
                 "Client channels (HTTP/2 connections) the streams are spread over")
      ->capture_default_str();
  app.add_option("--rounds", rounds,
                 "Runs of --streams, one after the other (memory that grew per round would "
                 "show a leak)")
      ->capture_default_str();
  app.add_option("--pid", pid, "Process to sample (/proc/PID/status); 0: none");
  app.add_option("--sample-ms", sample_ms, "Sampling period")->capture_default_str();
  app.add_flag("--json", json, "One JSON object instead of the text report");
  CLI11_PARSE(app, argc, argv);
  if (streams < 1 || channels < 1 || rounds < 1 || sample_ms < 1 || max_new_tokens < 1) {
    std::cerr << "dmoe-router-load: --streams, --channels, --rounds, --sample-ms and "
                 "--max-new-tokens must be >= 1\n";
    return 2;
  }

  std::vector<std::unique_ptr<dmoe::v1::Generation::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("dmoe.load_channel", i);  // distinct arguments: one connection each
    stubs.push_back(dmoe::v1::Generation::NewStub(
        grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args)));
  }
  dmoe::v1::GenerateRequest request;
  dmoe::v1::ChatMessage* message = request.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content(chat);
  request.mutable_params()->set_max_new_tokens(max_new_tokens);
  // No stop tokens: every stream generates max_new_tokens, so every run is the same load.
  request.mutable_params()->mutable_stop_ids();

  std::optional<ProcessSample> idle;
  if (pid > 0) {
    idle = ReadStatus(pid);
    if (!idle) {
      std::cerr << "dmoe-router-load: no process " << pid << "\n";
      return 2;
    }
  }
  if (!json) {
    std::cout << "streams " << streams << " x " << rounds << " rounds, " << max_new_tokens
              << " tokens each";
    if (idle) {
      std::cout << "; process " << pid << " idle: threads " << idle->threads << ", RSS "
                << Kib(idle->rss_kib);
    }
    std::cout << "\n";
  }
  std::string rounds_json;
  bool all_completed = true;
  for (int round = 1; round <= rounds; ++round) {
    std::unique_ptr<Sampler> sampler;
    if (pid > 0) sampler = std::make_unique<Sampler>(pid, absl::Milliseconds(sample_ms));
    Tally tally(streams);
    const absl::Time start = absl::Now();
    for (int i = 0; i < streams; ++i) {
      new Stream(stubs[i % channels].get(), request, absl::Seconds(deadline_seconds), &tally);
    }
    tally.WaitAll();
    const absl::Duration wall = absl::Now() - start;
    ProcessSample peak;
    int64_t samples = 0;
    std::optional<ProcessSample> after;
    if (sampler) {
      sampler->Stop();
      peak = sampler->peak();
      samples = sampler->samples();
      after = ReadStatus(pid);
    }
    const int64_t completed = tally.completed();
    const int64_t failed = tally.failed();
    all_completed = all_completed && failed == 0 && completed == streams;
    if (json) {
      absl::StrAppend(&rounds_json, round > 1 ? ", " : "", "{\"completed\": ", completed,
                      ", \"failed\": ", failed, ", \"tokens\": ", tally.tokens(),
                      ", \"blocks\": ", tally.blocks(),
                      ", \"wall_seconds\": ", absl::ToDoubleSeconds(wall));
      if (sampler) {
        absl::StrAppend(&rounds_json, ", \"samples\": ", samples,
                        ", \"peak_threads\": ", peak.threads,
                        ", \"peak_rss_kib\": ", peak.rss_kib,
                        ", \"vm_hwm_kib\": ", peak.hwm_kib);
        if (after) {
          absl::StrAppend(&rounds_json, ", \"after_threads\": ", after->threads,
                          ", \"after_rss_kib\": ", after->rss_kib);
        }
      }
      absl::StrAppend(&rounds_json, "}");
    } else {
      std::cout << "round " << round << ": completed " << completed << ", failed " << failed
                << ", " << tally.tokens() << " tokens in " << tally.blocks() << " blocks, "
                << absl::FormatDuration(absl::Trunc(wall, absl::Milliseconds(1)));
      if (sampler) {
        std::cout << "; peak threads " << peak.threads << ", RSS " << Kib(peak.rss_kib)
                  << " (" << samples << " samples every " << sample_ms << " ms)";
        if (after) {
          std::cout << "; after: threads " << after->threads << ", RSS "
                    << Kib(after->rss_kib);
        }
      }
      std::cout << std::endl;
    }
    for (const auto& [why, n] : tally.failures()) {
      std::cerr << "dmoe-router-load: round " << round << ": " << n << " streams failed: "
                << why << "\n";
    }
  }
  if (json) {
    std::cout << "{\"streams\": " << streams << ", \"max_new_tokens\": " << max_new_tokens;
    if (idle) {
      std::cout << ", \"pid\": " << pid << ", \"idle_threads\": " << idle->threads
                << ", \"idle_rss_kib\": " << idle->rss_kib;
    }
    std::cout << ", \"rounds\": [" << rounds_json << "]}" << std::endl;
  }
  return all_completed ? 0 : 1;
}
