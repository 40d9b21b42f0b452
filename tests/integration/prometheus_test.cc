// A real Prometheus (Debian's `prometheus`, installed by scripts/setup) scrapes a local
// cluster of real processes under load; through its HTTP API the key series exist, carry
// model_version, and move: tokens and forwards grow with load, TPF > 0, latency histograms
// fill, and the tokens routed per expert (attention side) sum to the rows the expert pods
// computed. This is what a Grafana dashboard or an alert rule would see.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "clients/cli/local_cluster.h"
#include "clients/cpp/generation_client.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/concurrency.h"
#include "tests/testing/http.h"
#include "tests/integration/tiny_cluster.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::cli {
namespace {

namespace fs = std::filesystem;
using dmoe_testing::HttpGet;

constexpr int32_t kStop = TinyCluster::kStop;

class Prometheus {
 public:
  // Starts prometheus scraping `targets` every second; waits until its API answers.
  // `rule_files`: loaded with every group's interval cut to 1 s (the expressions unchanged).
  static std::unique_ptr<Prometheus> Start(const std::string& dir,
                                           const std::vector<std::string>& targets,
                                           const std::vector<std::string>& rule_files) {
    auto p = std::unique_ptr<Prometheus>(new Prometheus());
    p->port_ = dmoe_testing::PickFreePort();
    const std::string config = dir + "/prometheus.yml";
    std::ofstream out(config);
    out << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: dmoe\n    static_configs:\n"
        << "      - targets: ['" << absl::StrJoin(targets, "', '") << "']\n"
        << "rule_files:\n";
    for (size_t i = 0; i < rule_files.size(); ++i) {
      std::ifstream in(rule_files[i]);
      std::stringstream text;
      text << in.rdbuf();
      const std::string copy = absl::StrCat(dir, "/rules-", i, ".yml");
      std::ofstream(copy) << std::regex_replace(text.str(), std::regex("interval: [0-9]+[sm]"),
                                                "interval: 1s");
      out << "  - " << copy << "\n";
    }
    out.close();
    const std::string log = dir + "/prometheus.log";
    p->pid_ = fork();
    if (p->pid_ == 0) {
      freopen(log.c_str(), "w", stdout);
      freopen(log.c_str(), "a", stderr);
      const std::string listen = absl::StrCat("--web.listen-address=127.0.0.1:", p->port_);
      const std::string config_flag = "--config.file=" + config;
      const std::string storage = "--storage.tsdb.path=" + dir + "/tsdb";
      execlp("prometheus", "prometheus", config_flag.c_str(), storage.c_str(), listen.c_str(),
             "--log.level=warn", static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 300; ++i) {
      if (HttpGet(p->url("/-/ready"), absl::Seconds(1)).ok()) return p;
      int status;
      if (waitpid(p->pid_, &status, WNOHANG) == p->pid_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "prometheus did not become ready; log " << log;
    return nullptr;
  }
  ~Prometheus() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }

  std::string url(const std::string& path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

  // The instant vector of `query` as (labels, value) pairs; fails the test on API errors.
  std::vector<std::pair<nlohmann::json, double>> Query(const std::string& query) const {
    auto body = HttpGet(url("/api/v1/query?query=" + dmoe_testing::UrlEncode(query)));
    EXPECT_TRUE(body.ok()) << body.status();
    std::vector<std::pair<nlohmann::json, double>> out;
    if (!body.ok()) return out;
    const nlohmann::json j = nlohmann::json::parse(*body);
    EXPECT_EQ(j.value("status", ""), "success") << *body;
    for (const auto& r : j["data"]["result"]) {
      out.emplace_back(r["metric"], std::stod(r["value"][1].get<std::string>()));
    }
    return out;
  }
  // The single value of a scalar-like query; NaN when it has no result.
  double Value(const std::string& query) const {
    auto r = Query(query);
    return r.size() == 1 ? r[0].second : std::nan("");
  }
  // Waits until `query` has a value satisfying `pred` (scrapes run every second).
  bool WaitFor(const std::string& query, const std::function<bool(double)>& pred,
               absl::Duration timeout = absl::Seconds(30)) const {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const double v = Value(query);
      if (!std::isnan(v) && pred(v)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return false;
  }

 private:
  Prometheus() = default;
  pid_t pid_ = 0;
  int port_ = 0;
};

// Sends `n` concurrent requests; returns the generated tokens of those that succeeded.
int64_t Load(const std::string& router, int n, int salt) {
  auto client = client::GenerationClient::Connect({.target = router});
  EXPECT_TRUE(client.ok());
  const std::vector<int64_t> generated = dmoe_testing::RunConcurrently(n, [&](int i) -> int64_t {
    v1::GenerateRequest r;
    for (int t = 0; t < 4 + i; ++t) {
      r.mutable_prompt_ids()->add_ids((t * 37 + (i + salt) * 101) % 3900);
    }
    r.mutable_params()->set_threshold(i % 2 ? 0.5f : 0.0f);
    r.mutable_params()->set_block_length(8);
    r.mutable_params()->set_max_new_tokens(16);
    r.mutable_params()->mutable_stop_ids()->add_ids(kStop);
    auto response = (*client)->Generate(r, {.timeout = absl::Seconds(60)});
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->ids_size() : 0;
  });
  int64_t tokens = 0;
  for (int64_t g : generated) tokens += g;
  return tokens;
}

TEST(PrometheusIntegrationTest, KeySeriesExistAndMoveUnderLoad) {
  TinyCluster tiny;
  ASSERT_TRUE(tiny.Start(/*attention=*/1, /*expert_shards=*/2, /*expert_replicas=*/1).ok());
  LocalCluster* cluster = &tiny.cluster();
  dmoe_testing::TempDir dir;

  std::vector<std::string> targets;
  std::string scheduler;
  for (const ClusterProcess& p : cluster->processes) {
    if (!p.metrics.empty()) targets.push_back(p.metrics);
    if (p.role == "scheduler") scheduler = p.metrics;
  }
  ASSERT_EQ(targets.size(), 5u);  // router, scheduler, 2 expert pods, 1 attention replica
  // The shipped recording and alerting rules (deploy/prometheus/rules).
  std::vector<std::string> rules;
  for (const auto& f :
       fs::directory_iterator(fs::path(DMOE_TEST_SOURCE_DIR) / "deploy/prometheus/rules")) {
    rules.push_back(f.path().string());
  }
  ASSERT_FALSE(rules.empty());
  auto prometheus = Prometheus::Start(dir.path(), targets, rules);
  ASSERT_NE(prometheus, nullptr);
  ASSERT_TRUE(prometheus->WaitFor("count(up == 1)", [&](double v) {
    return v == static_cast<double>(targets.size());
  })) << "not every target is up";

  // Wave 1.
  const int64_t wave1 = Load(cluster->router, 6, 0);
  ASSERT_GT(wave1, 0);
  ASSERT_TRUE(prometheus->WaitFor("sum(dmoe_generation_tokens_total)",
                                  [&](double v) { return v == static_cast<double>(wave1); }))
      << "generated tokens never reached " << wave1 << "; last "
      << prometheus->Value("sum(dmoe_generation_tokens_total)");
  // Wave 2: the counter moves by exactly what the clients received.
  const int64_t wave2 = Load(cluster->router, 6, 1);
  EXPECT_TRUE(prometheus->WaitFor("sum(dmoe_generation_tokens_total)", [&](double v) {
    return v == static_cast<double>(wave1 + wave2);
  }));

  // Every dmoe series carries model_version.
  EXPECT_TRUE(prometheus->Query("{__name__=~\"dmoe_.+\", model_version=\"\"}").empty());
  EXPECT_EQ(prometheus->Value("sum(dmoe_requests_finished_total{finished_reason=~\"stop|length\"})"), 12);
  EXPECT_EQ(prometheus->Value("sum(dmoe_grpc_server_handled_total{grpc_method=\"Generate\","
                              "grpc_code=\"OK\",instance=\"" + scheduler + "\"})"),
            12);
  // The router is another target, scraped at its own moments.
  EXPECT_TRUE(prometheus->WaitFor("sum(dmoe_router_requests_total{grpc_code=\"OK\"})",
                                  [](double v) { return v == 12; }));
  // TPF from the counters, as the recording rule computes it.
  const double tpf =
      prometheus->Value("sum(dmoe_generation_tokens_total) / sum(dmoe_forwards_total)");
  EXPECT_GT(tpf, 0.0);
  EXPECT_LE(tpf, 8.0);  // at most a block (8) per forward
  EXPECT_EQ(prometheus->Value("sum(dmoe_tokens_per_forward_count)"), 12);
  EXPECT_GT(prometheus->Value("sum(dmoe_iterations_total)"), 0);
  EXPECT_FALSE(std::isnan(prometheus->Value(
      "histogram_quantile(0.9, sum by (le) (dmoe_time_to_first_block_seconds_bucket))")));
  EXPECT_EQ(prometheus->Value("sum(dmoe_e2e_request_latency_seconds_count)"), 12);
  // Experts: every routed (token, slot) was computed by exactly one expert pod.
  ASSERT_TRUE(prometheus->WaitFor(
      "sum(dmoe_expert_tokens_total) - sum(dmoe_expert_rows_total)",
      [](double v) { return v == 0; }))
      << "routed " << prometheus->Value("sum(dmoe_expert_tokens_total)") << " vs computed "
      << prometheus->Value("sum(dmoe_expert_rows_total)");
  EXPECT_GT(prometheus->Value("sum(dmoe_expert_rows_total)"), 0);
  EXPECT_EQ(prometheus->Query("dmoe_expert_imbalance_ratio").size(), 2u);  // MoE layers 1, 2
  for (const auto& [labels, v] : prometheus->Query("dmoe_expert_imbalance_ratio")) {
    EXPECT_GE(v, 1.0) << labels.dump();
  }
  EXPECT_EQ(prometheus->Query("dmoe_expert_dispatch_seconds_count").size(), 2u);  // 2 shards
  // The attention replica's own rate (dmoe plan --attention-metrics): positions computed, and
  // busy lane-seconds that exclude the waits for expert shards (so below the steps' total
  // times the 2 micro-batches a replica runs by default).
  EXPECT_GT(prometheus->Value("sum(dmoe_attention_positions_total)"), 0);
  EXPECT_GT(prometheus->Value("sum(dmoe_attention_busy_seconds_total)"), 0);
  EXPECT_LT(prometheus->Value("sum(dmoe_attention_busy_seconds_total)"),
            2 * prometheus->Value("sum(dmoe_attention_step_seconds_sum)"));
  EXPECT_EQ(prometheus->Value("count(dmoe_expert_shard_replicas == 1)"), 2);
  EXPECT_EQ(prometheus->Value("sum(dmoe_cluster_members)"), 3);
  EXPECT_EQ(prometheus->Value("sum(dmoe_num_requests_running)"), 0);
  EXPECT_GT(prometheus->Value("max(dmoe_kv_cache_pages_capacity)"), 0);

  // The shipped rules evaluate without errors on real series, and the TPF recording rule
  // agrees with the counters.
  EXPECT_TRUE(prometheus->WaitFor("dmoe:tokens_per_forward:ratio_rate1m",
                                  [](double v) { return v > 0; }))
      << "the TPF recording rule never produced a value";
  auto rules_state = HttpGet(prometheus->url("/api/v1/rules"));
  ASSERT_TRUE(rules_state.ok());
  int evaluated = 0;
  const nlohmann::json rules_json = nlohmann::json::parse(*rules_state);
  for (const auto& group : rules_json["data"]["groups"]) {
    for (const auto& rule : group["rules"]) {
      EXPECT_EQ(rule.value("health", ""), "ok") << rule.dump();
      ++evaluated;
    }
  }
  EXPECT_GT(evaluated, 10);
  // A healthy cluster fires no alert.
  EXPECT_TRUE(prometheus->Query("ALERTS{alertstate=\"firing\"}").empty());
}

}  // namespace
}  // namespace dmoe::cli
