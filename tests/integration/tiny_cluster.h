// A local cluster of real processes (clients/cli/local_cluster.h) on a random tiny checkpoint
// without a tokenizer, for integration tests: ids 4000 (mask) and 4001 (stop). Stops every
// process on destruction.
#ifndef DMOE_TESTS_INTEGRATION_TINY_CLUSTER_H_
#define DMOE_TESTS_INTEGRATION_TINY_CLUSTER_H_

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "clients/cli/local_cluster.h"
#include "common/status_macros.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::cli {

class TinyCluster {
 public:
  static constexpr int32_t kMask = 4000;
  static constexpr int32_t kStop = 4001;

  // Writes the checkpoint (dir()/model) and starts the processes.
  absl::Status Start(int attention, int expert_shards, int expert_replicas,
                     const std::vector<std::string>& extra_scheduler_args = {}) {
    DMOE_RETURN_IF_ERROR(
        dmoe_testing::WriteTinyCheckpoint(dir_.Join("model"), dmoe_testing::DecodingSpec()));
    const char* bin = std::getenv("DMOE_BIN_DIR");
    options_ = {.model_dir = dir_.Join("model"),
                .bin_dir = bin ? bin : ".",
                .run_dir = dir_.Join("run"),
                .attention = attention,
                .expert_shards = expert_shards,
                .expert_replicas = expert_replicas,
                .scheduler_args = {"--mask-id", std::to_string(kMask), "--stop-ids",
                                   std::to_string(kStop)}};
    options_.scheduler_args.insert(options_.scheduler_args.end(), extra_scheduler_args.begin(),
                                   extra_scheduler_args.end());
    DMOE_ASSIGN_OR_RETURN(cluster_, StartLocalCluster(options_));
    started_ = true;
    return absl::OkStatus();
  }
  ~TinyCluster() {
    if (started_) StopLocalCluster(cluster_);
  }

  const dmoe_testing::TempDir& dir() const { return dir_; }
  std::string model_dir() const { return dir_.Join("model"); }
  const LocalClusterOptions& options() const { return options_; }
  LocalCluster& cluster() { return cluster_; }
  // The first process of `role`; nullptr when there is none.
  const ClusterProcess* Find(const std::string& role) const {
    for (const ClusterProcess& p : cluster_.processes) {
      if (p.role == role) return &p;
    }
    return nullptr;
  }

 private:
  dmoe_testing::TempDir dir_;
  LocalClusterOptions options_;
  LocalCluster cluster_;
  bool started_ = false;
};

}  // namespace dmoe::cli

#endif  // DMOE_TESTS_INTEGRATION_TINY_CLUSTER_H_
