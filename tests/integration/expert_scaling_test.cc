// Expert scale-out and scale-in under load (issue 5): a third replica of a shard joins a
// running cluster and one leaves it (SIGTERM: it leaves the placement, waits for the attention
// replicas to switch, then drains) while requests keep flowing. No request fails, every one
// still equals the single-process engine, and the scheduler's /metrics shows the replica
// count and the placement changes.
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <future>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "clients/cli/local_cluster.h"
#include "clients/cpp/generation_client.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/http.h"
#include "tests/integration/tiny_cluster.h"

namespace dmoe::cli {
namespace {

constexpr int32_t kMask = TinyCluster::kMask;
constexpr int32_t kStop = TinyCluster::kStop;
constexpr int kVariants = 4;

std::vector<int32_t> Prompt(int i) {
  std::vector<int32_t> p;
  for (int t = 0; t < 5 + 3 * i; ++t) p.push_back((t * 37 + i * 101) % 3900);
  return p;
}

engine::GenerationParams Params(int i) {
  engine::GenerationParams p;
  p.threshold = i % 2 ? 0.5f : 0.9f;
  p.block_length = 8;
  p.max_new_tokens = 24;
  p.mask_id = kMask;
  p.stop_ids = {kStop};
  return p;
}

// The value of `series` (exact name and labels, e.g. `x{a="b"}` without model_version)
// in a Prometheus text exposition; NaN when absent.
double Scraped(const std::string& text, const std::string& name, const std::string& label) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + "{", 0) != 0 || line.find(label) == std::string::npos) continue;
    double v;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) return v;
  }
  return std::nan("");
}

TEST(ExpertScalingTest, ReplicasJoinAndLeaveUnderLoadWithoutFailedRequests) {
  TinyCluster tiny;
  ASSERT_TRUE(tiny.Start(/*attention=*/1, /*expert_shards=*/2, /*expert_replicas=*/2).ok());
  LocalCluster* cluster = &tiny.cluster();
  auto engine = engine::Engine::Create({.model_dir = tiny.model_dir(), .num_threads = 1});
  ASSERT_TRUE(engine.ok());
  std::vector<engine::GenerationRequest> requests;
  for (int i = 0; i < kVariants; ++i) requests.push_back({Prompt(i), Params(i)});
  auto expected = (*engine)->Generate(requests);
  ASSERT_TRUE(expected.ok());

  ASSERT_NE(tiny.Find("scheduler"), nullptr);
  const std::string scheduler_metrics = "http://" + tiny.Find("scheduler")->metrics + "/metrics";
  auto scrape = [&](const std::string& name, const std::string& label) {
    auto text = dmoe_testing::HttpGet(scheduler_metrics);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? Scraped(*text, name, label) : std::nan("");
  };
  auto wait_for = [&](const std::string& name, const std::string& label, double want) {
    for (int i = 0; i < 100; ++i) {
      if (scrape(name, label) == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  };
  const std::string shard0 = "shard=\"0-8\"";
  ASSERT_TRUE(wait_for("dmoe_expert_shard_replicas", shard0, 2));
  const double changes_before = scrape("dmoe_expert_placement_changes_total", "model_version");

  // Load: two clients loop over the request variants until told to stop.
  std::atomic<bool> done{false};
  std::atomic<int> ok{0};
  std::vector<std::string> failures;
  absl::Mutex failures_mu;
  auto client = client::GenerationClient::Connect({.target = cluster->router});
  ASSERT_TRUE(client.ok());
  auto worker = [&](int salt) {
    for (int n = salt; !done; n += 2) {
      const int i = n % kVariants;
      v1::GenerateRequest r;
      for (int32_t id : Prompt(i)) r.mutable_prompt_ids()->add_ids(id);
      r.mutable_params()->set_threshold(Params(i).threshold);
      r.mutable_params()->set_block_length(8);
      r.mutable_params()->set_max_new_tokens(24);
      r.mutable_params()->mutable_stop_ids()->add_ids(kStop);
      auto response = (*client)->Generate(r, {.timeout = absl::Seconds(60)});
      absl::MutexLock lock(&failures_mu);
      if (!response.ok()) {
        failures.push_back(response.status().ToString());
      } else if (std::vector<int32_t>(response->ids().begin(), response->ids().end()) !=
                 (*expected)[i].ids) {
        failures.push_back("request variant " + std::to_string(i) + " changed its ids");
      } else {
        ++ok;
      }
    }
  };
  std::thread w0(worker, 0), w1(worker, 1);
  auto wait_requests = [&](int n) {
    const int target = ok + n;
    for (int i = 0; i < 600 && ok < target; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  };
  wait_requests(2);

  // Scale out: a third replica of shard 0 joins.
  auto added = StartPod(tiny.options(), *cluster, "expert", 0, 8, "expert-0-r2");
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_TRUE(wait_for("dmoe_expert_shard_replicas", shard0, 3));
  wait_requests(4);

  // Scale in: one of the original replicas is told to stop, as Kubernetes would.
  pid_t victim = 0;
  for (const ClusterProcess& p : cluster->processes) {
    if (p.name == "expert-0-r0") victim = p.pid;
  }
  ASSERT_GT(victim, 0);
  kill(victim, SIGTERM);
  EXPECT_TRUE(wait_for("dmoe_expert_shard_replicas", shard0, 2));
  wait_requests(4);
  done = true;
  w0.join();
  w1.join();

  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures[0];
  EXPECT_GE(ok, 10);
  EXPECT_GE(scrape("dmoe_expert_placement_changes_total", "model_version"), changes_before + 2);
  EXPECT_EQ(scrape("dmoe_expert_shard_replicas", "shard=\"8-16\""), 2);
}

}  // namespace
}  // namespace dmoe::cli
