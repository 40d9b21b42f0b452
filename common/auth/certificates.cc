#include "common/auth/certificates.h"

#include <filesystem>

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace dmoe::auth {
namespace {

// Single-quoted for /bin/sh.
std::string Quote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

absl::Status Run(const std::string& command) {
  const int rc = std::system(absl::StrCat(command, " >/dev/null 2>&1").c_str());
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("certificate generation failed (is openssl "
                                            "installed?): ", command));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MakeCertificateAuthority(const std::string& dir) {
  const std::string ca = dir + "/ca.pem", key = dir + "/ca.key";
  struct stat st;
  if (stat(ca.c_str(), &st) == 0) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  // umask 077: the key is never readable by others, not even between write and chmod.
  return Run(absl::StrCat(
      "umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
      "-keyout ", Quote(key), " -out ", Quote(ca), " -days 3650 -subj /CN=dmoe-cluster-ca "
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
      " && chmod 644 ", Quote(ca)));
}

absl::StatusOr<TlsOptions> IssueCertificate(const std::string& dir, const std::string& name,
                                            const std::string& host) {
  TlsOptions out;
  out.cert_file = absl::StrCat(dir, "/", name, ".pem");
  out.key_file = absl::StrCat(dir, "/", name, ".key");
  out.ca_file = dir + "/ca.pem";
  const std::string csr = absl::StrCat(dir, "/", name, ".csr");
  const std::string ext = absl::StrCat(dir, "/", name, ".ext");
  {
    std::ofstream f(ext);
    f << "subjectAltName=DNS:localhost,IP:127.0.0.1" << (host.empty() ? "" : ",DNS:" + host)
      << "\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n";
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", ext));
  }
  absl::Status status = Run(absl::StrCat(
      "umask 077 && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ",
      Quote(out.key_file), " -out ", Quote(csr), " -subj ", Quote("/CN=" + name),
      " && openssl x509 -req -in ", Quote(csr), " -CA ", Quote(out.ca_file), " -CAkey ",
      Quote(dir + "/ca.key"), " -CAcreateserial -days 3650 -extfile ", Quote(ext), " -out ",
      Quote(out.cert_file), " && chmod 644 ", Quote(out.cert_file)));
  std::remove(csr.c_str());
  std::remove(ext.c_str());
  if (!status.ok()) return status;
  return out;
}

}  // namespace dmoe::auth
