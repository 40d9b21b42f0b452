// The metric catalog and the /metrics endpoint: names follow Prometheus practice, families
// carry model_version, and the endpoint serves the registry over real HTTP on loopback.
#include <regex>
#include <set>

#include "gtest/gtest.h"
#include "metrics/catalog.h"
#include "metrics/endpoint.h"
#include "tests/testing/http.h"

namespace dmoe::metrics {
namespace {

TEST(MetricsCatalogTest, NamesAreUniquePrefixedAndTyped) {
  const std::regex name("dmoe_[a-z0-9_]+");
  std::set<std::string> seen;
  for (const MetricSpec& spec : Catalog()) {
    EXPECT_TRUE(std::regex_match(spec.name, name)) << spec.name;
    EXPECT_TRUE(seen.insert(spec.name).second) << "duplicate " << spec.name;
    EXPECT_FALSE(spec.help.empty()) << spec.name;
    const bool total = spec.name.size() > 6 && spec.name.substr(spec.name.size() - 6) == "_total";
    EXPECT_EQ(total, spec.type == MetricType::kCounter) << spec.name << ": only counters end in _total";
    EXPECT_EQ(spec.buckets.empty(), spec.type != MetricType::kHistogram) << spec.name;
    for (const std::string& label : spec.labels) EXPECT_NE(label, "model_version") << spec.name;
  }
}

TEST(MetricsEndpointTest, ServesTheRegistryOverHttp) {
  ProcessMetrics m = NewProcessMetrics("scheduler", "v3");
  CounterFamily(*m.registry, "dmoe_generation_tokens_total", m.model_version).Add({}).Increment(7);
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", m.registry);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const std::string base = "http://" + (*endpoint)->address();
  auto body = dmoe_testing::HttpGet(base + "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_NE(body->find("dmoe_generation_tokens_total{model_version=\"v3\"} 7"), std::string::npos)
      << *body;
  EXPECT_NE(body->find("dmoe_info{model_version=\"v3\",role=\"scheduler\"} 1"), std::string::npos);
  EXPECT_NE(body->find("# HELP dmoe_generation_tokens_total"), std::string::npos);
  // Counted again on the next scrape.
  CounterFamily(*m.registry, "dmoe_generation_tokens_total", m.model_version).Add({}).Increment(1);
  body = dmoe_testing::HttpGet(base + "/metrics");
  ASSERT_TRUE(body.ok());
  EXPECT_NE(body->find("dmoe_generation_tokens_total{model_version=\"v3\"} 8"), std::string::npos);
  EXPECT_FALSE(dmoe_testing::HttpGet(base + "/other").ok());  // 404
}

// GET /health: 503 until the process's gRPC server serves (MarkServing), then 200; what
// Kubernetes probes when the gRPC port speaks TLS (kubelet's gRPC probes are plaintext).
TEST(MetricsEndpointTest, HealthFollowsTheGrpcServer) {
  ProcessMetrics m = NewProcessMetrics("expert", "v1");
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", m.registry);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const std::string health = "http://" + (*endpoint)->address() + "/health";
  MarkServing(false);
  EXPECT_FALSE(dmoe_testing::HttpGet(health).ok());  // 503
  MarkServing(true);
  auto body = dmoe_testing::HttpGet(health);
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "serving\n");
}

TEST(MetricsEndpointTest, BadAddressesAreErrors) {
  auto registry = std::make_shared<prometheus::Registry>();
  EXPECT_EQ(MetricsEndpoint::Start("localhost", registry).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsEndpoint::Start("127.0.0.1:99999", registry).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto first = MetricsEndpoint::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok());
  auto taken = MetricsEndpoint::Start((*first)->address(), registry);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace dmoe::metrics
