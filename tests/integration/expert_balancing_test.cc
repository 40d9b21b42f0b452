// Expert load balancing with real processes (issue 15): a cluster of 4 expert shards whose
// scheduler rebalances as soon as a plan beats the active map, so expert maps are staged,
// loaded by the shards, switched to by the attention replica and released again while two
// clients keep generating. No request fails and every one equals the single-process engine.
#include <atomic>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "clients/cpp/generation_client.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/integration/tiny_cluster.h"
#include "tests/testing/http.h"

namespace dmoe::cli {
namespace {

constexpr int32_t kMask = TinyCluster::kMask;
constexpr int32_t kStop = TinyCluster::kStop;
constexpr int kVariants = 6;

std::vector<int32_t> Prompt(int i) {
  std::vector<int32_t> p;
  for (int t = 0; t < 6 + 4 * i; ++t) p.push_back((t * 53 + i * 211) % 3900);
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

// Sum of the values of `name` series whose labels contain `label`; NaN when none.
double Scraped(const std::string& text, const std::string& name, const std::string& label) {
  std::istringstream in(text);
  double sum = 0;
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + "{", 0) != 0 || line.find(label) == std::string::npos) continue;
    double v;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) {
      sum += v;
      found = true;
    }
  }
  return found ? sum : std::nan("");
}

TEST(ExpertBalancingTest, PlacementsChangeUnderLoadWithoutFailedRequestsOrChangedIds) {
  TinyCluster tiny;
  ASSERT_TRUE(tiny.Start(/*attention=*/1, /*expert_shards=*/4, /*expert_replicas=*/1,
                         {"--expert-balancing", "--imbalance-bound", "1.0",
                          "--rebalance-interval-s", "1", "--load-window-s", "4",
                          "--min-window-tokens", "100", "--redundant-slots", "2"})
                  .ok());
  auto engine = engine::Engine::Create({.model_dir = tiny.model_dir(), .num_threads = 1});
  ASSERT_TRUE(engine.ok());
  std::vector<engine::GenerationRequest> requests;
  for (int i = 0; i < kVariants; ++i) requests.push_back({Prompt(i), Params(i)});
  auto expected = (*engine)->Generate(requests);
  ASSERT_TRUE(expected.ok());

  const std::string metrics = "http://" + tiny.Find("scheduler")->metrics + "/metrics";
  auto scrape = [&](const std::string& name, const std::string& label) {
    auto text = dmoe_testing::HttpGet(metrics);
    return text.ok() ? Scraped(*text, name, label) : std::nan("");
  };

  std::atomic<bool> done{false};
  std::atomic<int> phase{0};
  std::atomic<int> ok{0};
  std::vector<std::string> failures;
  absl::Mutex failures_mu;
  auto client = client::GenerationClient::Connect({.target = tiny.cluster().router});
  ASSERT_TRUE(client.ok());
  auto worker = [&](int salt) {
    for (int n = salt; !done; n += 2) {
      // The mix (variants 0-2 or 3-5) flips after every rebalance, so the window's hot experts
      // move away from the map just adopted and the next plan has something to gain.
      const int i = phase * 3 + n % 3;
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
        failures.push_back(absl::StrCat("request variant ", i, " changed its ids"));
      } else {
        ++ok;
      }
    }
  };
  std::thread w0(worker, 0), w1(worker, 1);
  // Wait for three rebalances (each: stage, every shard loads, switch, release).
  double rebalances = 0;
  for (int i = 0; i < 1800 && !(rebalances >= 3); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const double seen = scrape("dmoe_expert_rebalances_total", "model_version");
    if (seen > rebalances) phase = 1 - phase;
    if (!std::isnan(seen)) rebalances = seen;
  }
  const double redundant = scrape("dmoe_expert_redundant_experts", "model_version");
  const int before_tail = ok;
  for (int i = 0; i < 300 && ok < before_tail + 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  done = true;
  w0.join();
  w1.join();

  EXPECT_GE(rebalances, 3);
  EXPECT_GT(redundant, 0);
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures[0];
  EXPECT_GE(ok, 8);
  std::printf("%d requests, %.0f rebalances, %.0f redundant experts in use at the end\n",
              ok.load(), rebalances, redundant);
  if (::testing::Test::HasFailure()) {
    // What the scheduler decided (expert rebalance / map lines), to tell why.
    std::ifstream log(tiny.Find("scheduler")->log);
    for (std::string line; std::getline(log, line);) {
      if (line.find("expert") != std::string::npos || line.find("map") != std::string::npos) {
        std::printf("scheduler: %s\n", line.c_str());
      }
    }
  }
}

}  // namespace
}  // namespace dmoe::cli
