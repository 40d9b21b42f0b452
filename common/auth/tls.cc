#include "common/auth/tls.h"

#include <fstream>
#include <sstream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/internal_credentials.h"
#include "common/status_macros.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace dmoe::auth {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not PEM"));
  }
  return text.str();
}

// Watches the files: gRPC's FileWatcherCertificateProvider re-reads them every
// reload_seconds on a thread of its own (a half-written file is skipped until it parses).
std::shared_ptr<grpc::experimental::CertificateProviderInterface> FileWatcher(
    const TlsOptions& options) {
  const auto interval = static_cast<unsigned int>(options.reload_seconds);
  if (options.cert_file.empty()) {
    return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(options.ca_file,
                                                                                interval);
  }
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.key_file, options.cert_file, options.ca_file, interval);
}

// Reads every file once, so a missing or non-PEM one is a clear error at start (the watcher
// would only log it).
absl::Status CheckFiles(const TlsOptions& options) {
  for (const auto& [path, flag] : {std::pair{&options.ca_file, "--tls-ca"},
                                   std::pair{&options.key_file, "--tls-key"},
                                   std::pair{&options.cert_file, "--tls-cert"}}) {
    if (!path->empty()) DMOE_RETURN_IF_ERROR(ReadPem(*path, flag).status());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TlsOptions::Validate() const {
  if (!enabled()) return absl::OkStatus();
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-ca is required with --tls-cert: internal ports verify peers against it");
  }
  return absl::OkStatus();
}

void AddTlsFlags(CLI::App& app, TlsOptions& options) {
  app.add_option("--tls-cert", options.cert_file,
                 "PEM certificate of this process (TLS on the public port, mutual TLS on "
                 "internal ports and calls; docs/security.md)");
  app.add_option("--tls-key", options.key_file, "PEM private key of --tls-cert");
  app.add_option("--tls-ca", options.ca_file,
                 "PEM CA that signs the cluster's certificates (peers are verified against it)");
  app.add_option("--tls-reload-seconds", options.reload_seconds,
                 "Re-read --tls-cert, --tls-key and --tls-ca this often: a rotated certificate "
                 "(e.g. a renewed Kubernetes Secret) serves new connections without a restart; "
                 "0: read once")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tls-server-name", options.server_name,
                 "Check internal peers' certificates as this name instead of the address "
                 "dialled (one certificate for every pod, e.g. from a Kubernetes Secret)");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const TlsOptions& options, ClientCertificates client_certificates) {
  if (!options.enabled()) return grpc::InsecureServerCredentials();
  DMOE_RETURN_IF_ERROR(options.Validate());
  const grpc_ssl_client_certificate_request_type request_type =
      client_certificates == ClientCertificates::kRequired
          ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  if (options.reload_seconds > 0) {
    DMOE_RETURN_IF_ERROR(CheckFiles(options));
    grpc::experimental::TlsServerCredentialsOptions tls(FileWatcher(options));
    tls.watch_identity_key_cert_pairs();
    if (client_certificates == ClientCertificates::kRequired) tls.watch_root_certs();
    tls.set_cert_request_type(request_type);
    return grpc::experimental::TlsServerCredentials(tls);
  }
  grpc::SslServerCredentialsOptions ssl(request_type);
  DMOE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.ca_file, "--tls-ca"));
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  DMOE_ASSIGN_OR_RETURN(pair.private_key, ReadPem(options.key_file, "--tls-key"));
  DMOE_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(options.cert_file, "--tls-cert"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const TlsOptions& options) {
  if (!options.enabled()) return grpc::InsecureChannelCredentials();
  DMOE_RETURN_IF_ERROR(options.Validate());
  if (options.reload_seconds <= 0) return CallerCredentials(options);
  DMOE_RETURN_IF_ERROR(CheckFiles(options));
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(FileWatcher(options));
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  tls.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(tls);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> CallerCredentials(
    const TlsOptions& options) {
  if (!options.enabled()) return grpc::InsecureChannelCredentials();
  if (options.ca_file.empty()) return absl::InvalidArgumentError("--tls-ca is required for TLS");
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  grpc::SslCredentialsOptions ssl;
  DMOE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.ca_file, "--tls-ca"));
  if (!options.cert_file.empty()) {
    DMOE_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(options.key_file, "--tls-key"));
    DMOE_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(options.cert_file, "--tls-cert"));
  }
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> SetUpPodTls(const TlsOptions& options) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  DMOE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> channel,
                        ChannelCredentials(options));
  SetInternalChannelCredentials(std::move(channel), options.server_name);
  return ServerCredentials(options, ClientCertificates::kRequired);
}

}  // namespace dmoe::auth
