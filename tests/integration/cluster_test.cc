// Real processes on loopback: the ids generated through a cluster equal the single-process
// engine's, for several cluster shapes and with 16 concurrent requests mixed in the same
// steps; an expert replica killed with SIGKILL mid-generation changes nothing when its range
// has a second replica, and ends requests with UNAVAILABLE (not a hang) when it has none.
#include <httplib.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "clients/cli/local_cluster.h"
#include "clients/cpp/generation_client.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/concurrency.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::cli {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kMask = 4000;
constexpr int32_t kStop = 4001;

std::vector<int32_t> Prompt(int length, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < length; ++i) p.push_back((i * 37 + salt * 101) % 3900);
  return p;
}

engine::GenerationParams Params(int i) {
  engine::GenerationParams p;
  p.threshold = i % 3 == 0 ? 0.0f : i % 3 == 1 ? 0.5f : 0.95f;
  p.block_length = i % 2 ? 32 : 8;
  p.max_new_tokens = 12 + i;
  p.mask_id = kMask;
  p.stop_ids = {kStop};
  return p;
}

v1::GenerateRequest ToRequest(const std::vector<int32_t>& prompt, const engine::GenerationParams& p) {
  v1::GenerateRequest r;
  for (int32_t id : prompt) r.mutable_prompt_ids()->add_ids(id);
  r.mutable_params()->set_threshold(p.threshold);
  r.mutable_params()->set_block_length(p.block_length);
  r.mutable_params()->set_max_new_tokens(p.max_new_tokens);
  r.mutable_params()->mutable_stop_ids()->add_ids(kStop);
  return r;
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new dmoe_testing::TempDir();
    ASSERT_TRUE(
        dmoe_testing::WriteTinyCheckpoint(dir_->Join("model"), dmoe_testing::DecodingSpec()).ok());
    auto engine = engine::Engine::Create({.model_dir = dir_->Join("model"), .num_threads = 1});
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<engine::GenerationRequest> requests;
    for (int i = 0; i < 16; ++i) requests.push_back({Prompt(3 + 5 * i, i), Params(i)});
    auto results = (*engine)->Generate(requests);
    ASSERT_TRUE(results.ok());
    expected_ = new std::vector<std::vector<int32_t>>();
    for (const auto& r : *results) expected_->push_back(r.ids);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete expected_;
  }

  LocalClusterOptions Options(int attention, int shards, int replicas) {
    const char* bin = std::getenv("DMOE_BIN_DIR");
    return {.model_dir = dir_->Join("model"),
            .bin_dir = bin ? bin : ".",
            .run_dir = dir_->Join("run-" + std::to_string(runs_++)),
            .attention = attention,
            .expert_shards = shards,
            .expert_replicas = replicas,
            .scheduler_args = {"--mask-id", std::to_string(kMask), "--stop-ids",
                               std::to_string(kStop), "--lease-seconds", "2"}};
  }

  // Sends requests [0, n) concurrently; returns each one's ids or error.
  std::vector<absl::StatusOr<std::vector<int32_t>>> Run(const std::string& router, int n) {
    auto client = client::GenerationClient::Connect({.target = router});
    EXPECT_TRUE(client.ok());
    return dmoe_testing::RunConcurrently(n, [&](int i) -> absl::StatusOr<std::vector<int32_t>> {
      auto response = (*client)->Generate(ToRequest(Prompt(3 + 5 * i, i), Params(i)),
                                          {.timeout = absl::Seconds(60)});
      if (!response.ok()) return response.status();
      return std::vector<int32_t>(response->ids().begin(), response->ids().end());
    });
  }

  // SIGKILLs the process named `victim` while 16 requests run; every one must still complete
  // with the engine's ids.
  void ExpectExactWhileKilling(const LocalCluster& cluster, const std::string& victim) {
    pid_t pid = 0;
    for (const ClusterProcess& p : cluster.processes)
      if (p.name == victim) pid = p.pid;
    ASSERT_GT(pid, 0) << victim;
    auto running = std::async(std::launch::async, [&] { return Run(cluster.router, 16); });
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    kill(pid, SIGKILL);
    auto results = running.get();
    for (int i = 0; i < 16; ++i) {
      ASSERT_TRUE(results[i].ok()) << "request " << i << ": " << results[i].status();
      EXPECT_EQ(*results[i], (*expected_)[i]) << "request " << i;
    }
  }

  void ExpectExact(const std::string& router, int n) {
    auto results = Run(router, n);
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(results[i].ok()) << "request " << i << ": " << results[i].status();
      EXPECT_EQ(*results[i], (*expected_)[i]) << "request " << i;
    }
  }

  static dmoe_testing::TempDir* dir_;
  static std::vector<std::vector<int32_t>>* expected_;
  int runs_ = 0;
};

dmoe_testing::TempDir* ClusterTest::dir_ = nullptr;
std::vector<std::vector<int32_t>>* ClusterTest::expected_ = nullptr;

TEST_F(ClusterTest, OneShardOneRequestAndSixteenConcurrent) {
  auto cluster = StartLocalCluster(Options(1, 1, 1));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ExpectExact(cluster->router, 1);
  ExpectExact(cluster->router, 16);
  // The router's OpenAI-compatible HTTP API (cluster up starts it on a free port).
  ASSERT_FALSE(cluster->http.empty());
  const std::string& http = cluster->http;
  httplib::Client client(http.substr(0, http.rfind(':')), std::stoi(http.substr(http.rfind(':') + 1)));
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200) << health->body;
  auto completion = client.Post("/v1/completions", R"({"prompt": [1, 2, 3], "max_tokens": 4})",
                                "application/json");
  ASSERT_TRUE(completion);
  EXPECT_EQ(completion->status, 200) << completion->body;
  StopLocalCluster(*cluster);
}

// `dmoe cluster up --secure`: mutual TLS on every internal hop (router -> scheduler ->
// attention -> expert, pods -> scheduler), TLS and API keys on the router's port. The ids stay exact
// through it; a plaintext caller and a TLS caller without the cluster's certificate are turned
// away at the internal ports.
TEST_F(ClusterTest, SecureClusterServesExactlyAndRefusesStrangersAtInternalPorts) {
  LocalClusterOptions options = Options(1, 2, 1);
  options.secure = true;
  options.http_port = -1;
  auto cluster = StartLocalCluster(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ASSERT_FALSE(cluster->tls_ca.empty());
  // The keys it made: "user KEY" then "admin KEY", readable by the user only; the routers'
  // file holds their hashes, never the keys.
  ASSERT_FALSE(cluster->api_key_file.empty());
  struct stat key_file_stat {};
  ASSERT_EQ(stat(cluster->api_key_file.c_str(), &key_file_stat), 0);
  EXPECT_EQ(key_file_stat.st_mode & 0777, 0600u);
  std::ifstream keys_in(cluster->api_key_file);
  std::string user_name, user_key, admin_name, admin_key;
  keys_in >> user_name >> user_key >> admin_name >> admin_key;
  EXPECT_EQ(user_name, "user");
  EXPECT_EQ(admin_name, "admin");
  ASSERT_FALSE(user_key.empty());
  std::ifstream router_keys_in(
      (std::filesystem::path(cluster->api_key_file).parent_path() / "router-api-keys").string());
  std::stringstream router_keys;
  router_keys << router_keys_in.rdbuf();
  EXPECT_NE(router_keys.str().find("user user "), std::string::npos) << router_keys.str();
  EXPECT_EQ(router_keys.str().find(user_key), std::string::npos);
  EXPECT_EQ(router_keys.str().find(admin_key), std::string::npos);

  // Without a key the router refuses; with the user key it serves.
  auto keyless = client::GenerationClient::Connect({.target = cluster->router,
                                                    .tls_ca_file = cluster->tls_ca});
  ASSERT_TRUE(keyless.ok());
  EXPECT_EQ((*keyless)->Generate(ToRequest(Prompt(3, 0), Params(0)),
                                 {.timeout = absl::Seconds(10)}).status().code(),
            absl::StatusCode::kUnauthenticated);
  auto client = client::GenerationClient::Connect({.target = cluster->router,
                                                   .api_key = user_key,
                                                   .tls_ca_file = cluster->tls_ca});
  ASSERT_TRUE(client.ok()) << client.status();
  for (int i = 0; i < 4; ++i) {
    auto response = (*client)->Generate(ToRequest(Prompt(3 + 5 * i, i), Params(i)),
                                        {.timeout = absl::Seconds(60)});
    ASSERT_TRUE(response.ok()) << "request " << i << ": " << response.status();
    EXPECT_EQ(std::vector<int32_t>(response->ids().begin(), response->ids().end()),
              (*expected_)[i]);
  }
  // Plaintext at the router's TLS port fails.
  auto plaintext = client::GenerationClient::Connect({.target = cluster->router});
  ASSERT_TRUE(plaintext.ok());
  EXPECT_FALSE((*plaintext)->Generate(ToRequest(Prompt(3, 0), Params(0)),
                                      {.timeout = absl::Seconds(5)}).ok());
  // Every internal port: the Generation API of the scheduler and a health check of each pod
  // are refused to a TLS caller that trusts the CA but has no client certificate.
  for (const ClusterProcess& p : cluster->processes) {
    if (p.role == "router") continue;
    SCOPED_TRACE(p.name);
    auto stranger = client::GenerationClient::Connect({.target = p.address,
                                                       .tls_ca_file = cluster->tls_ca});
    ASSERT_TRUE(stranger.ok());
    auto models = (*stranger)->ListModels({.timeout = absl::Seconds(5)});
    EXPECT_EQ(models.status().code(), absl::StatusCode::kUnavailable) << models.status();
  }
  StopLocalCluster(*cluster);
}

// An attention replica killed with SIGKILL mid-generation: every request completes with the
// engine's ids, and only the dead replica's sequences re-prefill on the survivor (the
// scheduler's "re-prefilling X of N" lines never reset the whole batch).
TEST_F(ClusterTest, KilledAttentionReplicaReprefillsOnlyItsSequences) {
  auto cluster = StartLocalCluster(Options(2, 1, 1));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::string scheduler_log;
  for (const ClusterProcess& p : cluster->processes)
    if (p.role == "scheduler") scheduler_log = p.log;
  ExpectExactWhileKilling(*cluster, "attention-0");
  StopLocalCluster(*cluster);
  std::ifstream log(scheduler_log);
  std::string line;
  int retries = 0, kept = 0;
  while (std::getline(log, line)) {
    const size_t at = line.find("re-prefilling ");
    if (at == std::string::npos) continue;
    ++retries;
    int lost = 0, batch = 0;
    ASSERT_EQ(std::sscanf(line.c_str() + at, "re-prefilling %d of %d", &lost, &batch), 2) << line;
    // Each sequence's fate came from the replicas: only the dead one's were lost. All of a
    // step's sequences may be (late in the run, the survivor's requests may have finished).
    EXPECT_EQ(line.find("no per-sequence outcome"), std::string::npos) << line;
    EXPECT_LE(lost, batch) << line;
    if (lost < batch) ++kept;
  }
  if (retries == 0) std::cerr << "the replica died between steps: no step was retried\n";
  if (retries > 0 && kept == 0) std::cerr << "every retried step held only the dead replica's\n";
}

// Positions an attention replica has computed (dmoe_attention_positions_total on its /metrics).
double PositionsComputed(const ClusterProcess& pod) {
  httplib::Client client(pod.metrics.substr(0, pod.metrics.rfind(':')),
                         std::stoi(pod.metrics.substr(pod.metrics.rfind(':') + 1)));
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return -1;
  std::istringstream text(res->body);
  double total = 0;
  for (std::string line; std::getline(text, line);) {
    if (line.rfind("dmoe_attention_positions_total", 0) == 0) {
      total += std::stod(line.substr(line.rfind(' ') + 1));
    }
  }
  return total;
}

// An attention replica that is alive but stopped (SIGSTOP) mid-generation: its Step call times
// out (--step-timeout-s 3), it is treated as failed for that step and its sequences re-prefill
// on the other replica; every request completes with the engine's ids. After SIGCONT it
// registers again and computes steps again.
TEST_F(ClusterTest, StoppedAttentionReplicaTimesOutAndRejoinsWhenItRecovers) {
  LocalClusterOptions options = Options(2, 1, 1);
  options.scheduler_args.insert(options.scheduler_args.end(), {"--step-timeout-s", "3"});
  auto cluster = StartLocalCluster(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const ClusterProcess* victim = nullptr;
  for (const ClusterProcess& p : cluster->processes)
    if (p.name == "attention-0") victim = &p;
  ASSERT_NE(victim, nullptr);

  const auto start = std::chrono::steady_clock::now();
  auto running = std::async(std::launch::async, [&] { return Run(cluster->router, 16); });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  kill(victim->pid, SIGSTOP);
  auto results = running.get();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  kill(victim->pid, SIGCONT);
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(results[i].ok()) << "request " << i << ": " << results[i].status();
    EXPECT_EQ(*results[i], (*expected_)[i]) << "request " << i;
  }
  // Finished on the other replica while the victim was still stopped, well before the
  // default 60 s step timeout.
  EXPECT_LT(seconds, 45) << "the stopped replica's step was not timed out";

  // Recovered: it re-registers and takes sequences again.
  const double before = PositionsComputed(*victim);
  ASSERT_GE(before, 0);
  bool served = false;
  for (int round = 0; round < 20 && !served; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ExpectExact(cluster->router, 8);
    served = PositionsComputed(*victim) > before;
  }
  EXPECT_TRUE(served) << "attention-0 never computed a step after SIGCONT";
  StopLocalCluster(*cluster);
}

TEST_F(ClusterTest, ThreeShardsTwoReplicasTwoAttentionReplicas) {
  auto cluster = StartLocalCluster(Options(2, 3, 2));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ExpectExact(cluster->router, 16);
  StopLocalCluster(*cluster);
}

TEST_F(ClusterTest, KilledExpertReplicaWithASecondReplicaChangesNothing) {
  auto cluster = StartLocalCluster(Options(1, 2, 2));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ExpectExactWhileKilling(*cluster, "expert-0-r0");
  StopLocalCluster(*cluster);
}

TEST_F(ClusterTest, WithoutAReplicaRequestsFailUnavailableThenAReplacementServes) {
  LocalClusterOptions options = Options(1, 2, 1);
  auto cluster = StartLocalCluster(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  for (const ClusterProcess& p : cluster->processes)
    if (p.name == "expert-1-r0") kill(p.pid, SIGKILL);
  const absl::Time start = absl::Now();
  auto results = Run(cluster->router, 4);
  for (const auto& r : results) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));
  // A replacement registers; once the placement is complete again the cluster serves.
  auto pod = StartPod(options, *cluster, "expert", 8, 16, "expert-1-r1");
  ASSERT_TRUE(pod.ok()) << pod.status();
  absl::StatusOr<std::vector<int32_t>> ok = absl::UnknownError("not run");
  for (int attempt = 0; attempt < 50 && !ok.ok(); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ok = Run(cluster->router, 1)[0];
  }
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, (*expected_)[0]);
  StopLocalCluster(*cluster);
}

// `dmoe cluster up --attention-device / --expert-device` reach the pods' --device. Without a
// usable GPU (this machine, or a build without CUDA) the first cuda pod exits at startup and the
// error names it and quotes its log; on a GPU machine the cluster serves.
TEST_F(ClusterTest, DeviceOptionsReachThePods) {
  LocalClusterOptions bad = Options(1, 1, 1);
  bad.attention_device = "tpu";
  EXPECT_EQ(StartLocalCluster(bad).status().code(), absl::StatusCode::kInvalidArgument);

  LocalClusterOptions options = Options(1, 1, 1);
  options.expert_device = "cuda";
  auto cluster = StartLocalCluster(options);
  if (cluster.ok()) {
    auto results = Run(cluster->router, 2);
    for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
    StopLocalCluster(*cluster);
    return;
  }
  const std::string message(cluster.status().message());
  EXPECT_NE(message.find("expert-0-r0"), std::string::npos) << message;
  EXPECT_NE(message.find("--device cuda"), std::string::npos) << message;
}

// `dmoe cluster up --expert-transport`: nccl needs cuda on both sides (checked before any pod
// starts); with it, the pods get the flag (without a GPU the first pod exits naming the device).
TEST_F(ClusterTest, ExpertTransportOptionReachesThePods) {
  LocalClusterOptions bad = Options(1, 1, 1);
  bad.expert_transport = "nccl";
  auto refused = StartLocalCluster(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(refused.status().message()).find("--expert-device cuda"),
            std::string::npos)
      << refused.status();
  bad.expert_transport = "rdma";
  EXPECT_EQ(StartLocalCluster(bad).status().code(), absl::StatusCode::kInvalidArgument);

  LocalClusterOptions options = Options(1, 1, 1);
  options.attention_device = "cuda";
  options.expert_device = "cuda";
  options.expert_transport = "nccl";
  auto cluster = StartLocalCluster(options);
  if (cluster.ok()) {  // a GPU machine: requests succeed (over gRPC until a link is up)
    auto results = Run(cluster->router, 2);
    for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
    StopLocalCluster(*cluster);
    return;
  }
  const std::string message(cluster.status().message());
  EXPECT_NE(message.find("--device cuda"), std::string::npos) << message;
  EXPECT_EQ(message.find("--expert-transport"), std::string::npos) << message;
}

}  // namespace
}  // namespace dmoe::cli
