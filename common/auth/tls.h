// Transport security of every dmoe port (docs/security.md), built in one place: server
// credentials for the public port (TLS) and internal ports (mutual TLS: a client certificate
// signed by the cluster's CA is required), and the channel credentials internal clients present
// (router -> scheduler, scheduler -> attention, attention -> expert, pods -> scheduler).
//
// Every role takes the same three flags (--tls-cert, --tls-key, --tls-ca; AddTlsFlags); with
// none of them a process speaks plaintext, as before.
#ifndef DMOE_COMMON_AUTH_TLS_H_
#define DMOE_COMMON_AUTH_TLS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace CLI {
class App;
}  // namespace CLI

namespace dmoe::auth {

// PEM file paths. All empty: plaintext. (No "= {}" initializers: with them GCC 12 reports a
// false -Wmaybe-uninitialized on the std::function members of the options structs that hold
// a TlsOptions, e.g. EmbeddedServerOptions.)
struct TlsOptions {
  std::string cert_file;  // this process's certificate chain
  std::string key_file;   // its private key
  std::string ca_file;    // the CA that signs peers' certificates
  // Internal calls check the peer's certificate as this name instead of the address dialled
  // (one certificate for every pod; Kubernetes pod IPs are not known when it is issued).
  std::string server_name;
  // Servers and internal clients re-read the three files this often (a rotated Kubernetes
  // Secret takes effect without a restart; new handshakes use it); 0: read once at start.
  int reload_seconds = 60;

  bool enabled() const { return !cert_file.empty() || !key_file.empty() || !ca_file.empty(); }
  // INVALID_ARGUMENT naming the flag: a server needs a certificate and key; mutual TLS and
  // verifying servers need the CA, so a partial set is refused rather than half-secured.
  absl::Status Validate() const;
};

// Registers --tls-cert, --tls-key, --tls-ca on `app`; `options` must outlive the parse.
void AddTlsFlags(CLI::App& app, TlsOptions& options);

enum class ClientCertificates {
  kNotRequested,  // public port: TLS, callers authenticate with API keys
  kRequired,      // internal port: the caller must present a certificate signed by ca_file
};

// Insecure credentials when !options.enabled(). NOT_FOUND when a file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const TlsOptions& options, ClientCertificates client_certificates);

// What an internal client presents: plaintext when !options.enabled(), otherwise TLS verified
// against ca_file with cert_file/key_file as the client certificate. Both these and
// ServerCredentials watch the files (reload_seconds) after checking them once here.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const TlsOptions& options);

// A pod's internal transport security in one call (dmoe-attention, dmoe-expert): validates the
// flags, makes this process's internal clients present its certificate
// (SetInternalChannelCredentials) and returns the server credentials of its port, which
// requires a client certificate signed by ca_file. Plaintext for both without TLS flags.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> SetUpPodTls(const TlsOptions& options);

// As ChannelCredentials, for tools that call a public port: ca_file only (cert/key optional).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> CallerCredentials(
    const TlsOptions& options);

}  // namespace dmoe::auth

#endif  // DMOE_COMMON_AUTH_TLS_H_
