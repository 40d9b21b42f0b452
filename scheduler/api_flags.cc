#include "scheduler/api_flags.h"

#include "common/id_list.h"
#include "common/status_macros.h"

namespace dmoe::scheduler {

void AddApiFlags(CLI::App& app, ApiFlags& flags) {
  app.add_option("--model", flags.model_dir, "Checkpoint directory (HF layout)")->required();
  app.add_option("--listen", flags.listen, "host:port (port 0 picks a free one)")
      ->capture_default_str();
  app.add_option("--model-name", flags.model_name,
                 "Served model name (default: the directory's name)");
  app.add_option("--model-version", flags.model_version,
                 "Served model version (the model_version label of every metric)")
      ->capture_default_str();
  app.add_option("--metrics-listen", flags.metrics_listen,
                 "host:port of the Prometheus /metrics endpoint (port 0 picks one); "
                 "empty: no endpoint");
  app.add_option("--http-listen", flags.http_listen,
                 "host:port of the OpenAI-compatible HTTP API (/v1/completions, "
                 "/v1/chat/completions, /v1/models, /health); empty: none");
  app.add_option("--kv-pages", flags.kv_pages, "KV cache capacity in pages")
      ->capture_default_str();
  app.add_option("--kv-page-tokens", flags.kv_page_tokens, "Tokens per KV page")
      ->capture_default_str();
  app.add_option("--max-queue", flags.max_queue,
                 "Requests waiting for admission before RESOURCE_EXHAUSTED")
      ->capture_default_str();
  app.add_option("--max-batch-tokens", flags.max_batch_tokens, "Token budget of one batched step")
      ->capture_default_str();
  app.add_option("--max-batch-sequences", flags.max_batch_sequences, "Sequences per step")
      ->capture_default_str();
  app.add_option("--mask-id", flags.mask_id, "Override the mask token id");
  app.add_option("--stop-ids", flags.stop_ids, "Override the stop token ids, e.g. 5,7");
  app.add_option("--drain-seconds", flags.drain_seconds,
                 "On SIGTERM/SIGINT, how long requests in flight may take to finish")
      ->capture_default_str();
  app.add_option("--api-keys", flags.api_keys_file,
                 "API keys file (NAME ROLE SHA256HEX [rps=N] [streams=N] [tpm=N] per line; "
                 "docs/security.md), re-read when it changes; empty: no authentication");
  auth::AddTlsFlags(app, flags.tls);
  app.add_option("--journal", flags.journal,
                 "Journal of accepted requests and committed blocks (docs/operations.md): "
                 "unfinished requests resume after a restart and clients re-attach by "
                 "request id; on Kubernetes a file on a persistent volume. Empty: none");
  app.add_option("--journal-fsync", flags.journal_fsync,
                 "When journal records reach the disk: always (every record), interval "
                 "(group commit every --journal-fsync-interval-ms) or never (the OS decides)")
      ->capture_default_str();
  app.add_option("--journal-fsync-interval-ms", flags.journal_fsync_interval_ms,
                 "Group commit interval of --journal-fsync interval: a machine crash loses at "
                 "most this much, which is recomputed")
      ->capture_default_str();
}

absl::StatusOr<GenerationEndpointOptions> ToEndpointOptions(const ApiFlags& flags) {
  // Field by field: GCC 12 reports a false -Wmaybe-uninitialized on a designated initializer
  // here (the nested SchedulerOptions' std::function members).
  GenerationEndpointOptions options;
  options.model_dir = flags.model_dir;
  options.listen = flags.listen;
  options.model_name = flags.model_name;
  options.model_version = flags.model_version;
  options.kv_page_tokens = flags.kv_page_tokens;
  options.kv_pages = flags.kv_pages;
  options.scheduler.max_batch_tokens = flags.max_batch_tokens;
  options.scheduler.max_batch_sequences = flags.max_batch_sequences;
  options.scheduler.max_queue = flags.max_queue;
  options.metrics_listen = flags.metrics_listen;
  options.http_listen = flags.http_listen;
  options.api_keys_file = flags.api_keys_file;
  DMOE_RETURN_IF_ERROR(flags.tls.Validate());
  options.tls = flags.tls;
  if (flags.mask_id >= 0) options.mask_id = flags.mask_id;
  if (!flags.journal.empty()) {
    options.journal.path = flags.journal;
    DMOE_ASSIGN_OR_RETURN(options.journal.fsync,
                          ParseJournalFsync(flags.journal_fsync, "--journal-fsync"));
    options.journal.fsync_interval = absl::Milliseconds(flags.journal_fsync_interval_ms);
    DMOE_RETURN_IF_ERROR(options.journal.Validate());
  }
  if (!flags.stop_ids.empty()) {
    DMOE_ASSIGN_OR_RETURN(options.stop_ids, ParseIdList(flags.stop_ids, "--stop-ids"));
  }
  return options;
}

}  // namespace dmoe::scheduler
