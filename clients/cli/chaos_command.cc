// `dmoe chaos`: fault injection against a real loopback cluster it starts itself (two routers,
// a scheduler with a journal, two attention replicas, two expert shards of two pods each).
// N client streams run for the whole duration (the C++ client with both routers as targets
// and retries on), while every --kill-every seconds a pod of a random role is SIGKILLed and
// started again on its address, and half-way between two kills a random pod is SIGSTOPped
// for --pause-seconds, then SIGCONTed. Every finished request's ids are checked against
// `dmoe generate` for the same prompt and parameters. docs/operations.md, "Chaos runs".
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "clients/cli/local_cluster.h"
#include "clients/cli/request_flood.h"
#include "clients/cpp/generation_client.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace dmoe::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct ChaosFlags {
  std::string model;
  double duration_s = 60;
  int streams = 4;
  double kill_every_s = 15;
  double pause_s = 2;
  double step_timeout_s = 5;  // the scheduler's --step-timeout-s: longer pauses time out
  int max_new_tokens = 32;
  int prompts = 4;
  int64_t flood = 0;  // malformed requests sent at every port during the load
  uint64_t seed = 1;
  std::string run_dir;  // "": a fresh temporary directory, removed unless --keep-logs
  bool keep_logs = false;
  bool json = false;
};

// What happened to one fault.
struct Fault {
  std::string kind;   // "kill" or "pause"
  std::string role;
  std::string name;
  double at_s = 0;    // since the start of the load
  // kill: seconds from the SIGKILL to the first block any client received after it (the
  // first successful step after the kill); < 0: none before the run ended.
  double recovery_s = -1;
  std::string error = "";  // the restart failed: why
};

struct Outcome {
  int64_t sent = 0, completed = 0, failed = 0, lost = 0, wrong = 0;
  std::map<std::string, int64_t> errors;  // failed calls by status code
};

std::string Prompt(int i) {
  static const char* const kPrompts[] = {
      "The quick brown fox", "Once upon a time", "In a distant galaxy", "The capital of France is",
      "Water boils at", "My favourite colour is", "To be or not to be", "A long time ago"};
  return kPrompts[i % 8];
}

// Runs argv (no shell) and returns what it printed on stdout; its stderr goes to ours.
absl::StatusOr<std::string> RunAndCapture(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buffer[4096];
  for (ssize_t n; (n = read(fds[0], buffer, sizeof buffer)) > 0;) out.append(buffer, n);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(argv[0], " ", argv[1], " failed (status ", status,
                                            "): ", out));
  }
  return out;
}

// `dmoe generate` (this same binary) for prompt i: the reference ids.
absl::StatusOr<std::vector<int32_t>> ReferenceIds(const ChaosFlags& f, int i) {
  DMOE_ASSIGN_OR_RETURN(
      std::string out,
      RunAndCapture({(fs::path(SelfBinDir()) / "dmoe").string(), "generate", "--model", f.model,
                     "--prompt", Prompt(i), "--max-new-tokens", std::to_string(f.max_new_tokens),
                     "--threads", "1", "--json"}));
  nlohmann::json j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("ids")) {
    return absl::InternalError(absl::StrCat("dmoe generate printed no ids: ", out));
  }
  return j["ids"].get<std::vector<int32_t>>();
}

class ChaosRun {
 public:
  ChaosRun(const ChaosFlags& f, LocalClusterOptions options, LocalCluster cluster,
           std::vector<std::vector<int32_t>> reference)
      : f_(f), options_(std::move(options)), cluster_(std::move(cluster)),
        reference_(std::move(reference)), rng_(f.seed) {}

  // Load and faults for the duration; then waits for the streams (a bounded grace).
  void Run() {
    start_ = Clock::now();
    stop_at_ = start_ + Seconds(f_.duration_s);
    std::vector<std::thread> workers;
    for (int w = 0; w < f_.streams; ++w) workers.emplace_back([this, w] { Stream(w); });
    std::thread flood;
    if (f_.flood > 0) {
      flooding_ = true;
      flood = std::thread([this] {
        FloodOptions o;
        for (const ClusterProcess& p : cluster_.processes) {
          FloodTarget t{.address = p.address, .services = {}};
          if (p.role == "router") t.services = {"dmoe.v1.Generation", "dmoe.v1.RouterAdmin"};
          if (p.role == "scheduler") t.services = {"dmoe.v1.Generation", "dmoe.v1.Cluster"};
          if (p.role == "attention") t.services = {"dmoe.v1.AttentionService"};
          if (p.role == "expert") t.services = {"dmoe.v1.ExpertService", "dmoe.v1.NcclPairing"};
          o.grpc_ports.push_back(t);
        }
        o.http = cluster_.http;
        o.requests = f_.flood;
        o.seed = f_.seed;
        flood_ = RunRequestFlood(o);
        flooding_ = false;
      });
    }
    if (f_.kill_every_s > 0) InjectFaults();
    // The load goes on until the duration is over and the flood has been answered.
    while (Clock::now() < stop_at_ || flooding_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (flood.joinable()) flood.join();
    // A process that exited by itself crashed (the killed ones were restarted).
    for (const ClusterProcess& p : cluster_.processes) {
      int status;
      if (waitpid(p.pid, &status, WNOHANG) == p.pid || kill(p.pid, 0) != 0) {
        crashed_.push_back(p.name);
      }
    }
    // Requests started before the end finish (every pod is back by now); the grace bounds it.
    const auto grace_end = Clock::now() + std::chrono::seconds(120);
    for (;;) {
      if (in_flight_.load() == 0 || Clock::now() > grace_end) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    lost_ = in_flight_.load();
    abandon_ = true;  // streams still running now are counted lost, not failed
    StopLocalCluster(cluster_, absl::Seconds(5));
    for (std::thread& t : workers) t.join();
  }

  const std::vector<Fault>& faults() const { return faults_; }
  Outcome outcome() const {
    std::lock_guard<std::mutex> lock(mu_);
    Outcome o = outcome_;
    o.lost = lost_;
    return o;
  }
  const LocalCluster& cluster() const { return cluster_; }
  const FloodReport& flood() const { return flood_; }
  const std::vector<std::string>& crashed() const { return crashed_; }

 private:
  static std::chrono::nanoseconds Seconds(double s) {
    return std::chrono::nanoseconds(static_cast<int64_t>(s * 1e9));
  }
  double Elapsed() const {
    return std::chrono::duration<double>(Clock::now() - start_).count();
  }

  // One client stream: requests back to back until the end, each checked against its
  // reference.
  void Stream(int worker) {
    client::ClientOptions options;
    options.target = cluster_.routers[0];
    for (size_t r = 1; r < cluster_.routers.size(); ++r) {
      options.fallback_targets.push_back(cluster_.routers[r]);
    }
    options.retry.max_attempts = 1000;
    options.retry.max_retry_time = absl::Seconds(90);
    options.timeout = absl::Seconds(180);
    auto client = client::GenerationClient::Connect(options);
    if (!client.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      ++outcome_.failed;
      ++outcome_.errors[absl::StatusCodeToString(client.status().code())];
      return;
    }
    for (int n = 0; Clock::now() < stop_at_ || flooding_; ++n) {
      const int prompt = (worker + n) % static_cast<int>(reference_.size());
      dmoe::v1::GenerateRequest request;
      request.set_text(Prompt(prompt));
      request.set_request_id(absl::StrCat("chaos-", f_.seed, "-", worker, "-", n));
      request.mutable_params()->set_max_new_tokens(f_.max_new_tokens);
      std::vector<int32_t> ids;
      ++in_flight_;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++outcome_.sent;
      }
      auto final_event = (*client)->GenerateStream(
          request, [&](const dmoe::v1::GenerateStreamResponse& event) {
            if (event.has_block()) {
              ids.insert(ids.end(), event.block().ids().begin(), event.block().ids().end());
              last_block_ns_ = Clock::now().time_since_epoch().count();
            }
            return true;
          });
      if (abandon_) return;  // counted in lost_
      --in_flight_;
      std::lock_guard<std::mutex> lock(mu_);
      if (!final_event.ok()) {
        ++outcome_.failed;
        ++outcome_.errors[absl::StatusCodeToString(final_event.status().code())];
        std::cerr << "chaos: request " << request.request_id()
                  << " failed: " << final_event.status() << "\n";
      } else if (ids != reference_[prompt]) {
        ++outcome_.wrong;
        std::cerr << "chaos: request " << request.request_id() << " got " << ids.size()
                  << " ids that differ from dmoe generate's " << reference_[prompt].size() << "\n";
      } else {
        ++outcome_.completed;
      }
    }
  }

  // Kills (and restarts) and pauses until the end of the load.
  void InjectFaults() {
    const auto period = Seconds(f_.kill_every_s);
    auto next_kill = start_ + period;
    auto next_pause = start_ + period / 2;
    while (Clock::now() < stop_at_) {
      const auto now = Clock::now();
      if (now >= next_pause) {
        Pause();
        next_pause += period;
      } else if (now >= next_kill) {
        Kill();
        next_kill += period;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }

  // A pod of a random role: the roles in a shuffled order, reshuffled after each round, so
  // a short run still hits every role.
  size_t RandomProcess(std::vector<std::string>& round) {
    if (round.empty()) {
      round = {"router", "scheduler", "attention", "expert"};
      std::shuffle(round.begin(), round.end(), rng_);
    }
    const std::string role = round.back();
    round.pop_back();
    std::vector<size_t> of_role;
    for (size_t i = 0; i < cluster_.processes.size(); ++i) {
      if (cluster_.processes[i].role == role) of_role.push_back(i);
    }
    return of_role[std::uniform_int_distribution<size_t>(0, of_role.size() - 1)(rng_)];
  }

  void Kill() {
    const size_t i = RandomProcess(kill_round_);
    ClusterProcess& p = cluster_.processes[i];
    Fault fault{.kind = "kill", .role = p.role, .name = p.name, .at_s = Elapsed()};
    std::cerr << absl::StrFormat("chaos: %6.1f s  SIGKILL %s (pid %d)\n", fault.at_s, p.name,
                                 static_cast<int>(p.pid));
    const int64_t killed_ns = Clock::now().time_since_epoch().count();
    kill(p.pid, SIGKILL);
    int status;
    waitpid(p.pid, &status, 0);
    if (absl::Status s = RestartProcess(options_, cluster_, i); !s.ok()) {
      fault.error = std::string(s.message());
      std::cerr << "chaos: restarting " << p.name << " failed: " << s << "\n";
    }
    // Recovery: the first block any stream receives after the kill.
    const auto give_up = Clock::now() + std::chrono::seconds(60);
    while (last_block_ns_.load() <= killed_ns && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (last_block_ns_.load() > killed_ns) fault.recovery_s = (last_block_ns_.load() - killed_ns) / 1e9;
    faults_.push_back(fault);
  }

  void Pause() {
    const size_t i = RandomProcess(pause_round_);
    const ClusterProcess& p = cluster_.processes[i];
    Fault fault{.kind = "pause", .role = p.role, .name = p.name, .at_s = Elapsed()};
    std::cerr << absl::StrFormat("chaos: %6.1f s  SIGSTOP %s for %.1f s\n", fault.at_s, p.name,
                                 f_.pause_s);
    kill(p.pid, SIGSTOP);
    std::this_thread::sleep_for(Seconds(f_.pause_s));
    kill(p.pid, SIGCONT);
    faults_.push_back(fault);
  }

  const ChaosFlags& f_;
  LocalClusterOptions options_;
  LocalCluster cluster_;
  const std::vector<std::vector<int32_t>> reference_;
  std::mt19937_64 rng_;
  Clock::time_point start_, stop_at_;
  std::atomic<int64_t> last_block_ns_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> abandon_{false};
  int64_t lost_ = 0;
  mutable std::mutex mu_;
  Outcome outcome_;
  std::vector<Fault> faults_;
  std::vector<std::string> kill_round_, pause_round_;
  std::atomic<bool> flooding_{false};
  FloodReport flood_;
  std::vector<std::string> crashed_;
};

// Recovery after the kills of each role: count, median and max seconds (kills never
// recovered from count, with no time).
struct RoleRecovery {
  int kills = 0;
  int recovered = 0;
  double median_s = 0, max_s = 0;
};
std::map<std::string, RoleRecovery> RecoveryByRole(const std::vector<Fault>& faults) {
  std::map<std::string, std::vector<double>> times;
  std::map<std::string, RoleRecovery> out;
  for (const Fault& x : faults) {
    if (x.kind != "kill") continue;
    ++out[x.role].kills;
    if (x.recovery_s >= 0) times[x.role].push_back(x.recovery_s);
  }
  for (auto& [role, t] : times) {
    std::sort(t.begin(), t.end());
    RoleRecovery& r = out[role];
    r.recovered = static_cast<int>(t.size());
    r.median_s = t.size() % 2 ? t[t.size() / 2] : (t[t.size() / 2 - 1] + t[t.size() / 2]) / 2;
    r.max_s = t.back();
  }
  return out;
}

absl::Status RunChaos(const ChaosFlags& f) {
  if (!(f.duration_s > 0)) return absl::InvalidArgumentError("--duration must be > 0");
  if (f.streams < 1) return absl::InvalidArgumentError("--streams must be >= 1");
  if (f.kill_every_s < 0) return absl::InvalidArgumentError("--kill-every must be >= 0");
  if (f.flood < 0) return absl::InvalidArgumentError("--flood must be >= 0");
  if (f.kill_every_s > 0 && (f.pause_s < 0 || f.pause_s >= f.kill_every_s / 2)) {
    return absl::InvalidArgumentError("--pause-seconds must be in [0, kill-every / 2)");
  }
  if (f.max_new_tokens < 1) return absl::InvalidArgumentError("--max-new-tokens must be >= 1");
  if (!(f.step_timeout_s > 0)) return absl::InvalidArgumentError("--step-timeout must be > 0");
  if (f.prompts < 1 || f.prompts > 8) return absl::InvalidArgumentError("--prompts must be 1-8");

  std::cerr << "chaos: reference ids from dmoe generate for " << f.prompts << " prompts ...\n";
  std::vector<std::vector<int32_t>> reference;
  for (int i = 0; i < f.prompts; ++i) {
    DMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ReferenceIds(f, i));
    reference.push_back(std::move(ids));
  }

  const bool temporary = f.run_dir.empty();
  const std::string run_dir =
      temporary ? (fs::temp_directory_path() / absl::StrCat("dmoe-chaos-", getpid())).string()
                : f.run_dir;
  LocalClusterOptions options;
  options.model_dir = f.model;
  options.bin_dir = SelfBinDir();
  options.run_dir = run_dir;
  options.routers = 2;
  options.attention = 2;
  options.expert_shards = 2;
  options.expert_replicas = 2;
  options.http_port = f.flood > 0 ? 0 : -1;  // the flood hits the HTTP API too
  options.scheduler_args = {"--journal", (fs::path(run_dir) / "scheduler.journal").string(),
                            "--step-timeout-s", absl::StrCat(f.step_timeout_s)};
  std::cerr << "chaos: starting 2 routers, a journalling scheduler, 2 attention replicas and "
               "2 expert shards x 2 pods in "
            << run_dir << " ...\n";
  DMOE_ASSIGN_OR_RETURN(LocalCluster cluster, StartLocalCluster(options));
  std::cerr << absl::StrFormat("chaos: %d streams for %.0f s", f.streams, f.duration_s)
            << (f.kill_every_s > 0
                    ? absl::StrFormat("; SIGKILL + restart every %.0f s, SIGSTOP for %.1f s "
                                      "between kills",
                                      f.kill_every_s, f.pause_s)
                    : "; no kills")
            << (f.flood > 0 ? absl::StrFormat("; %d malformed requests", f.flood) : "") << "\n";
  ChaosRun run(f, options, std::move(cluster), std::move(reference));
  run.Run();
  const Outcome o = run.outcome();
  if (temporary && !f.keep_logs && o.failed + o.lost + o.wrong == 0 && run.crashed().empty()) {
    std::error_code ec;
    fs::remove_all(run_dir, ec);
  }

  if (f.json) {
    nlohmann::json faults = nlohmann::json::array();
    for (const Fault& x : run.faults()) {
      nlohmann::json j = {{"kind", x.kind}, {"role", x.role}, {"name", x.name}, {"at_s", x.at_s}};
      if (x.kind == "kill") j["recovery_s"] = x.recovery_s >= 0 ? nlohmann::json(x.recovery_s) : nullptr;
      if (!x.error.empty()) j["error"] = x.error;
      faults.push_back(j);
    }
    nlohmann::json by_role = nlohmann::json::object();
    for (const auto& [role, r] : RecoveryByRole(run.faults())) {
      by_role[role] = {{"kills", r.kills}, {"recovered", r.recovered},
                       {"median_s", r.median_s}, {"max_s", r.max_s}};
    }
    std::cout << nlohmann::json{{"sent", o.sent},           {"completed", o.completed},
                                {"recovery_by_role", by_role},
                                {"crashed", run.crashed()},
                                {"flood", {{"sent", run.flood().sent},
                                           {"replies", run.flood().replies},
                                           {"unclear", run.flood().unclear},
                                           {"unclear_examples", run.flood().unclear_examples}}},
                                {"failed", o.failed},       {"lost", o.lost},
                                {"wrong", o.wrong},         {"errors", o.errors},
                                {"faults", faults},         {"duration_s", f.duration_s},
                                {"streams", f.streams},     {"run_dir", run_dir}}
                     .dump(2)
              << "\n";
  } else {
    std::printf("| sent | completed | failed | lost | wrong |\n|---:|---:|---:|---:|---:|\n");
    std::printf("| %lld | %lld | %lld | %lld | %lld |\n\n", (long long)o.sent,
                (long long)o.completed, (long long)o.failed, (long long)o.lost, (long long)o.wrong);
    std::printf("| at (s) | fault | pod | recovery (s) |\n|---:|---|---|---:|\n");
    for (const Fault& x : run.faults()) {
      std::printf("| %.1f | %s | %s (%s) | %s |\n", x.at_s, x.kind == "kill" ? "SIGKILL + restart" : "SIGSTOP/SIGCONT",
                  x.name.c_str(), x.role.c_str(),
                  x.kind != "kill"         ? "-"
                  : x.recovery_s < 0       ? "none"
                                           : absl::StrFormat("%.2f", x.recovery_s).c_str());
    }
    std::printf("\n| role | kills | recovered | recovery median (s) | max (s) |\n"
                "|---|---:|---:|---:|---:|\n");
    for (const auto& [role, r] : RecoveryByRole(run.faults())) {
      std::printf("| %s | %d | %d | %.2f | %.2f |\n", role.c_str(), r.kills, r.recovered,
                  r.median_s, r.max_s);
    }
    if (f.flood > 0) {
      std::printf("\nflood: %lld malformed requests, %lld unclear replies; replies:",
                  (long long)run.flood().sent, (long long)run.flood().unclear);
      for (const auto& [kind, n] : run.flood().replies) std::printf(" %s %lld", kind.c_str(), (long long)n);
      std::printf("\n");
      for (const std::string& e : run.flood().unclear_examples) std::printf("  unclear: %s\n", e.c_str());
    }
    std::printf("crashed processes: %s\n",
                run.crashed().empty() ? "none" : absl::StrJoin(run.crashed(), ", ").c_str());
    std::printf("\nlogs: %s\n", temporary && !f.keep_logs && o.failed + o.lost + o.wrong == 0
                                    ? "removed (all requests correct; --keep-logs keeps them)"
                                    : run_dir.c_str());
  }
  if (!run.crashed().empty()) {
    return absl::InternalError(absl::StrCat("crashed: ", absl::StrJoin(run.crashed(), ", "),
                                            "; logs in ", run_dir));
  }
  if (o.failed + o.lost + o.wrong > 0) {
    return absl::DataLossError(absl::StrCat(o.failed, " failed, ", o.lost, " lost, ", o.wrong,
                                            " wrong of ", o.sent, " requests; logs in ", run_dir));
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterChaosCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<ChaosFlags>();
  CLI::App* cmd = app.add_subcommand(
      "chaos", "Fault injection: a loopback cluster under load while pods are killed, restarted "
               "and paused; checks that no request fails, is lost or differs from dmoe generate");
  cmd->add_option("--model", f->model, "Checkpoint directory (with a tokenizer)")->required();
  cmd->add_option("--duration", f->duration_s, "Seconds of load and faults")->capture_default_str();
  cmd->add_option("--streams", f->streams, "Concurrent client streams")->capture_default_str();
  cmd->add_option("--kill-every", f->kill_every_s,
                  "Seconds between SIGKILLs (a random pod, restarted on its address); 0: no kills "
                  "or pauses")
      ->capture_default_str();
  cmd->add_option("--pause-seconds", f->pause_s,
                  "SIGSTOP a random pod this long half-way between kills (0: no pauses)")
      ->capture_default_str();
  cmd->add_option("--step-timeout", f->step_timeout_s,
                  "The scheduler's --step-timeout-s: a pod paused longer is a straggler whose "
                  "step times out and moves")
      ->capture_default_str();
  cmd->add_option("--max-new-tokens", f->max_new_tokens, "Tokens per request")
      ->capture_default_str();
  cmd->add_option("--prompts", f->prompts, "Distinct prompts (1-8)")->capture_default_str();
  cmd->add_option("--flood", f->flood,
                  "Also send this many malformed requests at every port (gRPC methods, raw TCP, "
                  "the HTTP API) during the load; a crashed process fails the run")
      ->capture_default_str();
  cmd->add_option("--seed", f->seed, "Which pods are hit, and the request ids")
      ->capture_default_str();
  cmd->add_option("--run-dir", f->run_dir, "Logs and journal here (default: a temporary one)");
  cmd->add_flag("--keep-logs", f->keep_logs, "Keep the temporary run directory");
  cmd->add_flag("--json", f->json, "Print one JSON object");
  cmd->callback([f, exit_code] {
    absl::Status status = RunChaos(*f);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
