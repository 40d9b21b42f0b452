#include "clients/cpp/generation_client.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace dmoe::client {

absl::Status ClientOptions::Validate() const {
  if (target.empty()) return absl::InvalidArgumentError("target is empty");
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

}  // namespace

absl::StatusOr<std::unique_ptr<GenerationClient>> GenerationClient::Connect(
    const ClientOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = Credentials(options);
  if (!credentials.ok()) return credentials.status();
  return std::unique_ptr<GenerationClient>(
      new GenerationClient(grpc::CreateChannel(options.target, *credentials), options));
}

std::unique_ptr<GenerationClient> GenerationClient::FromChannel(
    std::shared_ptr<grpc::Channel> channel, const ClientOptions& options) {
  return std::unique_ptr<GenerationClient>(new GenerationClient(std::move(channel), options));
}

GenerationClient::GenerationClient(std::shared_ptr<grpc::Channel> channel,
                                   const ClientOptions& options)
    : options_(options), channel_(std::move(channel)),
      stub_(dmoe::v1::Generation::NewStub(channel_)) {}

void GenerationClient::Configure(grpc::ClientContext& context, const CallOptions& call) const {
  const std::string& key = call.api_key.empty() ? options_.api_key : call.api_key;
  if (!key.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", key));
  const absl::Duration timeout = call.timeout > absl::ZeroDuration() ? call.timeout : options_.timeout;
  if (timeout == absl::InfiniteDuration()) return;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

absl::StatusOr<dmoe::v1::GenerateResponse> GenerationClient::Generate(
    const dmoe::v1::GenerateRequest& request, const CallOptions& call) {
  grpc::ClientContext context;
  Configure(context, call);
  dmoe::v1::GenerateResponse response;
  grpc::Status status = stub_->Generate(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<dmoe::v1::FinalEvent> GenerationClient::GenerateStream(
    const dmoe::v1::GenerateRequest& request, const StreamCallback& on_event,
    const CallOptions& call) {
  grpc::ClientContext context;
  Configure(context, call);
  std::unique_ptr<grpc::ClientReader<dmoe::v1::GenerateStreamResponse>> reader =
      stub_->GenerateStream(&context, request);
  dmoe::v1::GenerateStreamResponse event;
  dmoe::v1::FinalEvent final_event;
  bool have_final = false, cancelled = false;
  while (reader->Read(&event)) {
    if (cancelled) continue;  // drain what is already on its way
    if (event.has_final()) {
      final_event = event.final();
      have_final = true;
    }
    if (on_event && !on_event(event)) {
      context.TryCancel();
      cancelled = true;
    }
  }
  grpc::Status status = reader->Finish();
  if (cancelled) return absl::CancelledError("cancelled by the caller");
  if (!status.ok()) return FromGrpcStatus(status);
  if (!have_final) return absl::InternalError("the stream ended without a final event");
  return final_event;
}

absl::StatusOr<dmoe::v1::TokenizeResponse> GenerationClient::Tokenize(
    const dmoe::v1::TokenizeRequest& request, const CallOptions& call) {
  grpc::ClientContext context;
  Configure(context, call);
  dmoe::v1::TokenizeResponse response;
  grpc::Status status = stub_->Tokenize(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<dmoe::v1::ListModelsResponse> GenerationClient::ListModels(const CallOptions& call) {
  grpc::ClientContext context;
  Configure(context, call);
  dmoe::v1::ListModelsResponse response;
  grpc::Status status = stub_->ListModels(&context, dmoe::v1::ListModelsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::Status GenerationClient::WaitForReady(absl::Duration timeout) {
  if (channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout))) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("no connection to ", options_.target, " after ",
                                             absl::FormatDuration(timeout)));
}

}  // namespace dmoe::client
