#include "clients/cli/local_cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/auth/api_keys.h"
#include "common/auth/certificates.h"
#include "common/auth/tls.h"
#include "common/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "model/config.h"
#include "nlohmann/json.hpp"
#include "proto/dmoe/v1/cluster.grpc.pb.h"

namespace dmoe::cli {
namespace {

namespace fs = std::filesystem;

std::string Tail(const std::string& path, int lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);) all.push_back(line);
  std::string out;
  for (size_t i = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0; i < all.size(); ++i) {
    absl::StrAppend(&out, "\n  | ", all[i]);
  }
  return out;
}

// fork + setsid + exec with stdout/stderr to `log`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log) {
  // Truncate here, not in the child: WaitListening must never see an earlier run's lines.
  std::ofstream(log, std::ios::trunc).close();
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    setsid();
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits for "listening on ADDR" in the log; fails if the process exits first.
absl::StatusOr<std::string> WaitListening(pid_t pid, const std::string& name, const std::string& log,
                                          absl::Time deadline) {
  static const std::regex kListening("listening on ([0-9.]+:[0-9]+)");
  while (absl::Now() < deadline) {
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    std::smatch m;
    std::string s = text.str();
    if (std::regex_search(s, m, kListening)) return m[1].str();
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return absl::UnavailableError(
          absl::StrCat(name, " (pid ", pid, ") exited before listening; log ", log, Tail(log, 8)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(name, " did not report 'listening on' in time; log ", log, Tail(log, 8)));
}

// The first address `pattern` (one capture group) finds in a process's log; "" without one.
std::string LoggedAddress(const std::string& log, const std::regex& pattern) {
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  std::smatch m;
  return std::regex_search(s, m, pattern) ? m[1].str() : "";
}

// "metrics on http://ADDR/metrics".
std::string MetricsAddress(const std::string& log) {
  static const std::regex kMetrics("metrics on http://([0-9.]+:[0-9]+)/metrics");
  return LoggedAddress(log, kMetrics);
}

// The OpenAI HTTP API: "HTTP API at http://ADDR".
std::string HttpAddress(const std::string& log) {
  static const std::regex kHttp("HTTP API at http://([0-9.]+:[0-9]+)");
  return LoggedAddress(log, kHttp);
}

void Kill(pid_t pid, int sig) {
  if (pid > 0) kill(pid, sig);
}

// Secure clusters: a user key and an admin key. The clients' file (NAME KEY) is created mode
// 0600; the routers' keys file holds only the hashes. Returns the routers' file.
absl::StatusOr<std::string> MakeApiKeys(const std::string& run_dir, LocalCluster& cluster) {
  std::string router_lines, client_lines;
  for (const auto& [name, role] : {std::pair<const char*, auth::Role>{"user", auth::Role::kUser},
                                   {"admin", auth::Role::kAdmin}}) {
    DMOE_ASSIGN_OR_RETURN(auth::GeneratedKey key, auth::GenerateKey(name, role));
    absl::StrAppend(&router_lines, key.line, "\n");
    absl::StrAppend(&client_lines, name, " ", key.key, "\n");
  }
  const std::string router_file = (fs::path(run_dir) / "router-api-keys").string();
  std::ofstream(router_file, std::ios::trunc) << router_lines;
  cluster.api_key_file = (fs::path(run_dir) / "api-keys").string();
  fs::remove(cluster.api_key_file);
  const int fd = open(cluster.api_key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create ", cluster.api_key_file, ": ",
                                            strerror(errno)));
  }
  const bool written =
      write(fd, client_lines.data(), client_lines.size()) == static_cast<ssize_t>(client_lines.size());
  close(fd);
  if (!written) return absl::InternalError(absl::StrCat("cannot write ", cluster.api_key_file));
  return router_file;
}

}  // namespace

absl::Status LocalClusterOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (routers < 1) return absl::InvalidArgumentError("--routers must be >= 1");
  if (attention < 1) return absl::InvalidArgumentError("--attention must be >= 1");
  if (expert_shards < 1) return absl::InvalidArgumentError("--expert-shards must be >= 1");
  if (expert_replicas < 1) return absl::InvalidArgumentError("--expert-replicas must be >= 1");
  auto check_device = [](const char* flag, const std::string& device) {
    return device == "cpu" || device == "cuda"
               ? absl::OkStatus()
               : absl::InvalidArgumentError(
                     absl::StrCat(flag, " must be cpu or cuda, got '", device, "'"));
  };
  DMOE_RETURN_IF_ERROR(check_device("--attention-device", attention_device));
  DMOE_RETURN_IF_ERROR(check_device("--expert-device", expert_device));
  if (expert_transport != "grpc" && expert_transport != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--expert-transport must be grpc or nccl, got '", expert_transport, "'"));
  }
  if (expert_transport == "nccl" && (attention_device != "cuda" || expert_device != "cuda")) {
    return absl::InvalidArgumentError(
        "--expert-transport nccl needs --attention-device cuda and --expert-device cuda");
  }
  for (const char* bin : {"dmoe-router", "dmoe-scheduler", "dmoe-attention", "dmoe-expert"}) {
    if (!fs::exists(fs::path(bin_dir) / bin)) {
      return absl::FailedPreconditionError(absl::StrCat(bin, " not found in ", bin_dir));
    }
  }
  return absl::OkStatus();
}

std::string SelfBinDir() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "." : self.parent_path().string();
}

// Records the addresses a process got (`address`, and those its log reports: metrics, HTTP)
// and puts them into its command line in place of the free-port requests, so RestartProcess
// brings it back where it was.
void PinAddresses(ClusterProcess& p, const std::string& address) {
  p.address = address;
  p.metrics = MetricsAddress(p.log);
  for (size_t i = 0; i + 1 < p.argv.size(); ++i) {
    if (p.argv[i] == "--listen") p.argv[i + 1] = address;
    if (p.argv[i] == "--metrics-listen" && !p.metrics.empty()) p.argv[i + 1] = p.metrics;
    if (p.argv[i] == "--http-listen") p.argv[i + 1] = HttpAddress(p.log);
  }
}

std::string TlsDir(const LocalClusterOptions& o) { return (fs::path(o.run_dir) / "tls").string(); }

// Secure clusters: the process's own certificate (made on first use) as --tls-* flags.
absl::Status AddTlsArgs(const LocalClusterOptions& o, const std::string& name,
                        std::vector<std::string>& argv) {
  if (!o.secure) return absl::OkStatus();
  DMOE_ASSIGN_OR_RETURN(auth::TlsOptions tls, auth::IssueCertificate(TlsDir(o), name));
  argv.insert(argv.end(), {"--tls-cert", tls.cert_file, "--tls-key", tls.key_file, "--tls-ca",
                           tls.ca_file});
  return absl::OkStatus();
}

absl::StatusOr<ClusterProcess> StartPod(const LocalClusterOptions& o, LocalCluster& cluster,
                                        const std::string& role, int first, int last,
                                        const std::string& name) {
  ClusterProcess p{.role = role, .name = name, .expert_first = first, .expert_last = last};
  p.log = (fs::path(o.run_dir) / (name + ".log")).string();
  std::vector<std::string> argv;
  const std::string threads = std::to_string(o.threads);
  if (role == "attention") {
    argv = {(fs::path(o.bin_dir) / "dmoe-attention").string(), "--model", o.model_dir,
            "--scheduler", cluster.scheduler, "--listen", "127.0.0.1:0", "--threads", threads,
            "--device", o.attention_device, "--expert-transport", o.expert_transport};
  } else {
    argv = {(fs::path(o.bin_dir) / "dmoe-expert").string(), "--model", o.model_dir,
            "--scheduler", cluster.scheduler, "--listen", "127.0.0.1:0", "--threads", threads,
            "--experts", absl::StrCat(first, ":", last), "--device", o.expert_device,
            "--expert-transport", o.expert_transport};
  }
  if (o.metrics) argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0"});
  DMOE_RETURN_IF_ERROR(AddTlsArgs(o, name, argv));
  DMOE_ASSIGN_OR_RETURN(p.pid, Spawn(argv, p.log));
  p.argv = argv;
  cluster.processes.push_back(p);
  DMOE_ASSIGN_OR_RETURN(std::string address,
                        WaitListening(p.pid, name, p.log, absl::Now() + o.startup_timeout));
  PinAddresses(cluster.processes.back(), address);
  return cluster.processes.back();
}

absl::StatusOr<LocalCluster> StartLocalCluster(const LocalClusterOptions& o) {
  DMOE_RETURN_IF_ERROR(o.Validate());
  DMOE_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(o.model_dir));
  fs::create_directories(o.run_dir);
  LocalCluster cluster;
  std::string router_keys;
  if (o.secure) {
    DMOE_RETURN_IF_ERROR(auth::MakeCertificateAuthority(TlsDir(o)));
    cluster.tls_ca = (fs::path(TlsDir(o)) / "ca.pem").string();
    DMOE_ASSIGN_OR_RETURN(router_keys, MakeApiKeys(o.run_dir, cluster));
  }
  auto fail = [&](absl::Status status) {
    StopLocalCluster(cluster, absl::Seconds(2));
    return status;
  };
  const absl::Time deadline = absl::Now() + o.startup_timeout;

  ClusterProcess scheduler{.role = "scheduler", .name = "scheduler"};
  scheduler.log = (fs::path(o.run_dir) / "scheduler.log").string();
  std::vector<std::string> argv = {(fs::path(o.bin_dir) / "dmoe-scheduler").string(), "--model",
                                   o.model_dir, "--listen", "127.0.0.1:0"};
  if (o.metrics) argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0"});
  argv.insert(argv.end(), o.scheduler_args.begin(), o.scheduler_args.end());
  if (absl::Status s = AddTlsArgs(o, "scheduler", argv); !s.ok()) return s;
  auto pid = Spawn(argv, scheduler.log);
  if (!pid.ok()) return pid.status();
  scheduler.pid = *pid;
  scheduler.argv = argv;
  cluster.processes.push_back(scheduler);
  auto address = WaitListening(scheduler.pid, "scheduler", scheduler.log, deadline);
  if (!address.ok()) return fail(address.status());
  cluster.scheduler = *address;
  PinAddresses(cluster.processes.back(), *address);

  for (int i = 0; i < o.routers; ++i) {
    // The first router takes --port and --http-port; the others free ports, no HTTP API.
    ClusterProcess router{.role = "router", .name = i == 0 ? "router" : absl::StrCat("router-", i)};
    router.log = (fs::path(o.run_dir) / (router.name + ".log")).string();
    std::vector<std::string> router_argv = {(fs::path(o.bin_dir) / "dmoe-router").string(),
                                            "--backend", cluster.scheduler, "--listen",
                                            absl::StrCat("127.0.0.1:", i == 0 ? o.port : 0)};
    if (o.metrics) router_argv.insert(router_argv.end(), {"--metrics-listen", "127.0.0.1:0"});
    if (i == 0 && o.http_port >= 0) {
      router_argv.insert(router_argv.end(),
                         {"--http-listen", absl::StrCat("127.0.0.1:", o.http_port)});
    }
    if (!router_keys.empty()) router_argv.insert(router_argv.end(), {"--api-keys", router_keys});
    if (absl::Status s = AddTlsArgs(o, router.name, router_argv); !s.ok()) return fail(s);
    auto router_pid = Spawn(router_argv, router.log);
    if (!router_pid.ok()) return fail(router_pid.status());
    router.pid = *router_pid;
    router.argv = router_argv;
    cluster.processes.push_back(router);
    auto router_address = WaitListening(router.pid, router.name, router.log, deadline);
    if (!router_address.ok()) return fail(router_address.status());
    cluster.routers.push_back(*router_address);
    PinAddresses(cluster.processes.back(), *router_address);
    if (i == 0 && o.http_port >= 0) cluster.http = HttpAddress(router.log);
  }
  cluster.router = cluster.routers.front();

  const int64_t experts = config.num_experts;
  for (int s = 0; s < o.expert_shards; ++s) {
    const int first = static_cast<int>(experts * s / o.expert_shards);
    const int last = static_cast<int>(experts * (s + 1) / o.expert_shards);
    for (int r = 0; r < o.expert_replicas; ++r) {
      auto pod = StartPod(o, cluster, "expert", first, last, absl::StrCat("expert-", s, "-r", r));
      if (!pod.ok()) return fail(pod.status());
    }
  }
  for (int a = 0; a < o.attention; ++a) {
    auto pod = StartPod(o, cluster, "attention", 0, 0, absl::StrCat("attention-", a));
    if (!pod.ok()) return fail(pod.status());
  }

  // Ready when the scheduler lists every pod and its placement covers all experts.
  // The scheduler's port wants a client certificate in a secure cluster: this tool gets one.
  auth::TlsOptions cli_tls;
  if (o.secure) {
    auto issued = auth::IssueCertificate(TlsDir(o), "dmoe-cli");
    if (!issued.ok()) return fail(issued.status());
    cli_tls = *issued;
  }
  auto credentials = auth::ChannelCredentials(cli_tls);
  if (!credentials.ok()) return fail(credentials.status());
  auto stub = dmoe::v1::Cluster::NewStub(grpc::CreateChannel(cluster.scheduler, *credentials));
  const size_t pods = static_cast<size_t>(o.attention + o.expert_shards * o.expert_replicas);
  std::string last_state = "no answer";
  while (absl::Now() < deadline) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    dmoe::v1::ListMembersResponse members;
    grpc::Status s = stub->ListMembers(&context, {}, &members);
    if (s.ok()) {
      grpc::ClientContext placement_context;
      dmoe::v1::Placement placement;
      if (stub->GetPlacement(&placement_context, {}, &placement).ok() && placement.complete() &&
          static_cast<size_t>(members.members_size()) >= pods) {
        // Attention pods adopt the placement on their next heartbeat.
        std::this_thread::sleep_for(std::chrono::milliseconds(1200));
        return cluster;
      }
      last_state = absl::StrCat(members.members_size(), " of ", pods, " pods registered");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return fail(absl::DeadlineExceededError(
      absl::StrCat("cluster not ready after ", absl::FormatDuration(o.startup_timeout), ": ",
                   last_state, "; logs in ", o.run_dir)));
}

absl::Status RestartProcess(const LocalClusterOptions& o, LocalCluster& cluster, size_t index) {
  if (index >= cluster.processes.size() || cluster.processes[index].argv.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no restartable process #", index));
  }
  ClusterProcess& p = cluster.processes[index];
  // Reap it if it died (a SIGKILLed child stays a zombie until then).
  int status;
  waitpid(p.pid, &status, WNOHANG);
  // Each run gets its own log (NAME.log, NAME.restart-1.log, ...): the old ones are evidence.
  std::string log;
  for (int k = 1; log.empty() || fs::exists(log); ++k) {
    log = (fs::path(o.run_dir) / absl::StrCat(p.name, ".restart-", k, ".log")).string();
  }
  DMOE_ASSIGN_OR_RETURN(p.pid, Spawn(p.argv, log));
  p.log = log;
  DMOE_ASSIGN_OR_RETURN(std::string address,
                        WaitListening(p.pid, p.name, log, absl::Now() + o.startup_timeout));
  if (address != p.address) {
    return absl::InternalError(absl::StrCat(p.name, " came back on ", address, ", not ", p.address));
  }
  return absl::OkStatus();
}

void StopLocalCluster(const LocalCluster& cluster, absl::Duration grace) {
  // Pods first, the scheduler last (it finishes requests still in flight).
  for (auto it = cluster.processes.rbegin(); it != cluster.processes.rend(); ++it) Kill(it->pid, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  for (const ClusterProcess& p : cluster.processes) {
    for (;;) {
      int status;
      pid_t r = waitpid(p.pid, &status, WNOHANG);
      if (r == p.pid || (r < 0 && kill(p.pid, 0) != 0)) break;  // reaped, or not our child and gone
      if (absl::Now() > deadline) {
        Kill(p.pid, SIGKILL);
        waitpid(p.pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

absl::Status WriteClusterState(const LocalCluster& cluster, const std::string& path) {
  nlohmann::json j;
  j["router"] = cluster.router;
  j["http"] = cluster.http;
  j["scheduler"] = cluster.scheduler;
  j["tls_ca"] = cluster.tls_ca;
  j["api_key_file"] = cluster.api_key_file;
  for (const ClusterProcess& p : cluster.processes) {
    j["processes"].push_back({{"role", p.role}, {"name", p.name}, {"pid", p.pid},
                              {"address", p.address}, {"log", p.log}, {"metrics", p.metrics},
                              {"expert_first", p.expert_first}, {"expert_last", p.expert_last}});
  }
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<LocalCluster> ReadClusterState(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("no cluster state at ", path, " (is a cluster up?)"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("router")) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a dmoe cluster state file"));
  }
  LocalCluster c;
  c.router = j["router"].get<std::string>();
  c.http = j.value("http", "");
  c.scheduler = j.value("scheduler", "");
  c.tls_ca = j.value("tls_ca", "");
  c.api_key_file = j.value("api_key_file", "");
  c.routers = {c.router};
  for (const auto& p : j.value("processes", nlohmann::json::array())) {
    c.processes.push_back({.role = p.value("role", ""), .name = p.value("name", ""),
                           .pid = p.value("pid", 0), .address = p.value("address", ""),
                           .log = p.value("log", ""), .metrics = p.value("metrics", ""),
                           .expert_first = p.value("expert_first", 0),
                           .expert_last = p.value("expert_last", 0)});
  }
  return c;
}

}  // namespace dmoe::cli
