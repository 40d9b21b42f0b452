// Certificates for a cluster's mutual TLS (docs/security.md), made with the `openssl` command:
// one CA per cluster and one certificate per process, each valid for localhost and 127.0.0.1
// (loopback clusters, `dmoe cluster up --secure`, tests). Production clusters get theirs from
// their own CA (Kubernetes Secrets, cert-manager) instead.
#ifndef DMOE_COMMON_AUTH_CERTIFICATES_H_
#define DMOE_COMMON_AUTH_CERTIFICATES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/auth/tls.h"

namespace dmoe::auth {

// Writes DIR/ca.pem and DIR/ca.key (P-256, mode 0600 for the key) unless DIR/ca.pem exists;
// creates DIR when missing.
// INTERNAL naming the command when openssl fails or is missing.
absl::Status MakeCertificateAuthority(const std::string& dir);

// Writes DIR/NAME.pem and DIR/NAME.key signed by DIR's CA, for serverAuth and clientAuth, with
// subjectAltName DNS:localhost, IP:127.0.0.1 and DNS:`host` (when given). Returns the
// TlsOptions that use them (cert, key and DIR/ca.pem).
absl::StatusOr<TlsOptions> IssueCertificate(const std::string& dir, const std::string& name,
                                            const std::string& host = "");

}  // namespace dmoe::auth

#endif  // DMOE_COMMON_AUTH_CERTIFICATES_H_
