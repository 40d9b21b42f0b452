#include "clients/cpp/generation_client.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace dmoe::client {

absl::Duration RetryPolicy::Backoff(int retry) const {
  if (retry < 1) return absl::ZeroDuration();
  // Capped before it can overflow: max_backoff is reached long before 2^62 ns.
  const double factor = std::pow(backoff_multiplier, std::min(retry - 1, 62));
  const double seconds = absl::ToDoubleSeconds(initial_backoff) * factor;
  if (!std::isfinite(seconds) || seconds >= absl::ToDoubleSeconds(max_backoff)) return max_backoff;
  return absl::Seconds(seconds);
}

absl::Status RetryPolicy::Validate() const {
  if (max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry.max_attempts must be >= 1 (1: no retry), got ", max_attempts));
  }
  if (max_retry_time <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("retry.max_retry_time must be positive, got ",
                                                   absl::FormatDuration(max_retry_time)));
  }
  if (initial_backoff < absl::ZeroDuration() || max_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retry.initial_backoff and retry.max_backoff must be >= 0");
  }
  if (!(backoff_multiplier >= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry.backoff_multiplier must be >= 1, got ", backoff_multiplier));
  }
  return absl::OkStatus();
}

bool IsRetryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable;
}

absl::Status ClientOptions::Validate() const {
  if (target.empty()) return absl::InvalidArgumentError("target is empty");
  for (const std::string& fallback : fallback_targets) {
    if (fallback.empty()) return absl::InvalidArgumentError("fallback_targets: an empty target");
  }
  if (absl::Status status = retry.Validate(); !status.ok()) return status;
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file and tls_key_file go together");
  }
  if (!tls_cert_file.empty() && tls_ca_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file needs tls_ca_file");
  }
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("timeout must be positive, got ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const ClientOptions& options) {
  if (options.tls_ca_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> ca = ReadPem(options.tls_ca_file);
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *std::move(ca);
  if (!options.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(options.tls_cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(options.tls_key_file);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

// The last try's error, saying how many tries there were when there was more than one.
absl::Status LastError(const absl::Status& status, int attempts) {
  if (attempts <= 1) return status;
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), " (the last of ", attempts, " tries)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<GenerationClient>> GenerationClient::Connect(
    const ClientOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = Credentials(options);
  if (!credentials.ok()) return credentials.status();
  std::vector<std::string> names = {options.target};
  names.insert(names.end(), options.fallback_targets.begin(), options.fallback_targets.end());
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  grpc::ChannelArguments arguments;
  if (options.retry.enabled()) {
    // gRPC's own reconnect backoff (1 s growing to 120 s) would keep a restarted server
    // unreachable long after it is back; a retrying client reconnects at its own pace.
    const int max_ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(options.retry.max_backoff), 100, 60'000));
    arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_ms);
  }
  for (const std::string& name : names) {
    channels.push_back(grpc::CreateCustomChannel(name, *credentials, arguments));
  }
  return std::unique_ptr<GenerationClient>(
      new GenerationClient(std::move(channels), std::move(names), options));
}

std::unique_ptr<GenerationClient> GenerationClient::FromChannel(
    std::shared_ptr<grpc::Channel> channel, const ClientOptions& options) {
  return FromChannels({std::move(channel)}, options);
}

std::unique_ptr<GenerationClient> GenerationClient::FromChannels(
    std::vector<std::shared_ptr<grpc::Channel>> channels, const ClientOptions& options) {
  std::vector<std::string> names;
  for (size_t i = 0; i < channels.size(); ++i) names.push_back(absl::StrCat("channel ", i));
  return std::unique_ptr<GenerationClient>(
      new GenerationClient(std::move(channels), std::move(names), options));
}

GenerationClient::GenerationClient(std::vector<std::shared_ptr<grpc::Channel>> channels,
                                   std::vector<std::string> names, const ClientOptions& options)
    : options_(options) {
  for (size_t i = 0; i < channels.size(); ++i) {
    Target target{.name = std::move(names[i]), .channel = std::move(channels[i]), .stub = nullptr};
    target.stub = dmoe::v1::Generation::NewStub(target.channel);
    targets_.push_back(std::move(target));
  }
}

absl::Time GenerationClient::Deadline(const CallOptions& call, absl::Time start) const {
  const absl::Duration timeout =
      call.timeout > absl::ZeroDuration() ? call.timeout : options_.timeout;
  return timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : start + timeout;
}

void GenerationClient::Configure(grpc::ClientContext& context, const CallOptions& call,
                                 absl::Time deadline) const {
  const std::string& key = call.api_key.empty() ? options_.api_key : call.api_key;
  if (!key.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", key));
  if (deadline != absl::InfiniteFuture()) context.set_deadline(absl::ToChronoTime(deadline));
}

dmoe::v1::GenerateRequest GenerationClient::WithRequestId(
    const dmoe::v1::GenerateRequest& request) const {
  dmoe::v1::GenerateRequest sent = request;
  if (options_.retry.enabled() && sent.request_id().empty()) {
    // A retry must name the request the first try started, so the id is made here, not by
    // the server: 128 random bits.
    std::random_device device;
    std::mt19937_64 bits((static_cast<uint64_t>(device()) << 32) ^ device());
    sent.set_request_id(absl::StrCat("c-", absl::Hex(bits(), absl::kZeroPad16),
                                     absl::Hex(bits(), absl::kZeroPad16)));
  }
  return sent;
}

bool GenerationClient::PrepareRetry(const absl::Status& status, int attempt, absl::Time start,
                                    absl::Time deadline, size_t& target) const {
  const RetryPolicy& retry = options_.retry;
  if (!retry.enabled() || attempt >= retry.max_attempts || !IsRetryable(status)) return false;
  const absl::Time now = absl::Now();
  const absl::Time latest = std::min(start + retry.max_retry_time, deadline);
  if (now >= latest) return false;
  // Another target is tried at once the first time; the same one (or all of them) only after
  // a backoff, so a restarting server is not hammered.
  absl::Duration wait =
      targets_.size() > 1 && attempt == 1 ? absl::ZeroDuration() : retry.Backoff(attempt);
  target = (target + 1) % targets_.size();
  if (retry.observer) retry.observer->OnRetry(status, attempt + 1, targets_[target].name);
  absl::SleepFor(std::min(wait, latest - now));
  preferred_.store(target);
  return true;
}

absl::StatusOr<dmoe::v1::GenerateResponse> GenerationClient::Generate(
    const dmoe::v1::GenerateRequest& request, const CallOptions& call) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = Deadline(call, start);
  const dmoe::v1::GenerateRequest sent = WithRequestId(request);
  size_t target = preferred_.load() % targets_.size();
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    Configure(context, call, deadline);
    dmoe::v1::GenerateResponse response;
    grpc::Status status = targets_[target].stub->Generate(&context, sent, &response);
    if (status.ok()) return response;
    absl::Status error = FromGrpcStatus(status);
    if (!PrepareRetry(error, attempt, start, deadline, target)) return LastError(error, attempt);
  }
}

struct GenerationClient::StreamProgress {
  // Offset of the first generated id the caller has not been handed yet.
  int64_t next_offset = 0;
  std::optional<dmoe::v1::FinalEvent> final_event;
  bool cancelled = false;  // by the caller's callback: never retried
};

absl::Status GenerationClient::StreamOnce(const Target& target,
                                          const dmoe::v1::GenerateRequest& request,
                                          const StreamCallback& on_event, const CallOptions& call,
                                          absl::Time deadline, StreamProgress& progress) const {
  grpc::ClientContext context;
  Configure(context, call, deadline);
  std::unique_ptr<grpc::ClientReader<dmoe::v1::GenerateStreamResponse>> reader =
      target.stub->GenerateStream(&context, request);
  dmoe::v1::GenerateStreamResponse event;
  absl::Status broken;  // the stream broke its contract: not retried
  while (reader->Read(&event)) {
    if (progress.cancelled || !broken.ok()) continue;  // drain what is already on its way
    if (event.has_block()) {
      dmoe::v1::BlockEvent& block = *event.mutable_block();
      const int64_t end = block.offset() + block.ids_size();
      if (block.offset() > progress.next_offset) {
        broken = absl::InternalError(absl::StrCat(
            "the stream skipped generated ids: a block at offset ", block.offset(),
            " follows ", progress.next_offset, " (", target.name, ")"));
        context.TryCancel();
        continue;
      }
      if (block.offset() < progress.next_offset) {
        // A retried stream sent ids the caller has (a server that ignores
        // resume_from_offset): hand over only the new ones.
        if (end <= progress.next_offset) continue;
        const int skip = static_cast<int>(progress.next_offset - block.offset());
        block.mutable_ids()->erase(block.mutable_ids()->begin(),
                                   block.mutable_ids()->begin() + skip);
        if (block.logprobs_size() >= skip) block.mutable_logprobs()->DeleteSubrange(0, skip);
        block.set_offset(progress.next_offset);
      }
      progress.next_offset = end;
    }
    if (event.has_final()) progress.final_event = event.final();
    if (on_event && !on_event(event)) {
      context.TryCancel();
      progress.cancelled = true;
    }
  }
  grpc::Status status = reader->Finish();
  if (progress.cancelled) return absl::CancelledError("cancelled by the caller");
  if (!broken.ok()) return broken;
  if (!status.ok()) return FromGrpcStatus(status);
  if (!progress.final_event) return absl::InternalError("the stream ended without a final event");
  return absl::OkStatus();
}

absl::StatusOr<dmoe::v1::FinalEvent> GenerationClient::GenerateStream(
    const dmoe::v1::GenerateRequest& request, const StreamCallback& on_event,
    const CallOptions& call) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = Deadline(call, start);
  dmoe::v1::GenerateRequest sent = WithRequestId(request);
  StreamProgress progress;
  progress.next_offset = request.resume_from_offset();
  size_t target = preferred_.load() % targets_.size();
  for (int attempt = 1;; ++attempt) {
    // The ids the caller has are not sent again (a journalling scheduler re-attaches; any
    // other starts anew and skips them).
    sent.set_resume_from_offset(progress.next_offset);
    absl::Status status = StreamOnce(targets_[target], sent, on_event, call, deadline, progress);
    if (status.ok()) return *progress.final_event;
    // The final event arrived and then the connection broke: the caller has it all, and a
    // retry would only repeat the final event.
    if (progress.final_event && options_.retry.enabled() && IsRetryable(status)) {
      return *progress.final_event;
    }
    if (progress.cancelled || !PrepareRetry(status, attempt, start, deadline, target)) {
      return LastError(status, attempt);
    }
  }
}

absl::StatusOr<dmoe::v1::TokenizeResponse> GenerationClient::Tokenize(
    const dmoe::v1::TokenizeRequest& request, const CallOptions& call) {
  grpc::ClientContext context;
  Configure(context, call, Deadline(call, absl::Now()));
  dmoe::v1::TokenizeResponse response;
  const Target& target = targets_[preferred_.load() % targets_.size()];
  grpc::Status status = target.stub->Tokenize(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<dmoe::v1::ListModelsResponse> GenerationClient::ListModels(const CallOptions& call) {
  grpc::ClientContext context;
  Configure(context, call, Deadline(call, absl::Now()));
  dmoe::v1::ListModelsResponse response;
  const Target& target = targets_[preferred_.load() % targets_.size()];
  grpc::Status status =
      target.stub->ListModels(&context, dmoe::v1::ListModelsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::Status GenerationClient::WaitForReady(absl::Duration timeout) {
  if (targets_[0].channel->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout))) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("no connection to ", targets_[0].name, " after ",
                                             absl::FormatDuration(timeout)));
}

}  // namespace dmoe::client
