// The command-line flags of the public API that `dmoe-scheduler` and `dmoe serve` share
// (address, model naming, KV capacity, batching, decoding ids, metrics, drain), so both spell
// and default them the same way.
#ifndef DMOE_SCHEDULER_API_FLAGS_H_
#define DMOE_SCHEDULER_API_FLAGS_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "common/auth/tls.h"
#include "scheduler/generation_endpoint.h"

namespace dmoe::scheduler {

struct ApiFlags {
  std::string model_dir;
  std::string listen = "127.0.0.1:0";
  std::string model_name;
  std::string model_version = "v1";
  std::string metrics_listen;
  std::string http_listen;
  int64_t kv_pages = 8192;
  int64_t kv_page_tokens = 32;
  int64_t max_queue = 256;
  int64_t max_batch_tokens = 4096;
  int64_t max_batch_sequences = 64;
  int32_t mask_id = -1;
  std::string stop_ids;
  double drain_seconds = 30;
  std::string api_keys_file;
  auth::TlsOptions tls;
  std::string journal;
  std::string journal_fsync = "interval";
  double journal_fsync_interval_ms = 100;
};

// Registers the flags on `app`; `flags` must outlive the parse.
void AddApiFlags(CLI::App& app, ApiFlags& flags);

// INVALID_ARGUMENT naming the flag (e.g. a malformed --stop-ids).
absl::StatusOr<GenerationEndpointOptions> ToEndpointOptions(const ApiFlags& flags);

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_API_FLAGS_H_
