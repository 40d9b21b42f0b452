// `dmoe keys new NAME [--role user|admin] [--rps N] [--streams N] [--tpm N]`: a fresh API key
// (docs/security.md). Prints the key (give it to the tenant; it is not stored anywhere) and the
// keys-file line that admits it, which holds only the key's SHA-256.
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/auth/api_keys.h"

namespace dmoe::cli {
namespace {

struct KeysFlags {
  std::string name;
  std::string role = "user";
  double rps = 0;
  int64_t streams = 0;
  int64_t tpm = 0;
};

absl::Status RunKeysNew(const KeysFlags& f) {
  const auth::Role role = f.role == "admin" ? auth::Role::kAdmin : auth::Role::kUser;
  absl::StatusOr<auth::GeneratedKey> key = auth::GenerateKey(f.name, role);
  if (!key.ok()) return key.status();
  std::string line = key->line;
  if (f.rps > 0) absl::StrAppend(&line, " rps=", f.rps);
  if (f.streams > 0) absl::StrAppend(&line, " streams=", f.streams);
  if (f.tpm > 0) absl::StrAppend(&line, " tpm=", f.tpm);
  std::cout << "key:  " << key->key << "\n"
            << "line: " << line << "\n";
  return absl::OkStatus();
}

}  // namespace

void RegisterKeysCommand(CLI::App& app, int* exit_code) {
  CLI::App* keys = app.add_subcommand("keys", "API keys of the public API (docs/security.md)");
  keys->require_subcommand(1);
  auto f = std::make_shared<KeysFlags>();
  CLI::App* create = keys->add_subcommand(
      "new", "Print a fresh random key and the keys-file line (its SHA-256) that admits it");
  create->add_option("name", f->name, "Tenant name (the `tenant` metric label)")->required();
  create->add_option("--role", f->role, "user or admin (RouterAdmin needs admin)")
      ->check(CLI::IsMember({"user", "admin"}))
      ->capture_default_str();
  create->add_option("--rps", f->rps, "Requests per second limit (0 = none)");
  create->add_option("--streams", f->streams, "Concurrent generations limit (0 = none)");
  create->add_option("--tpm", f->tpm, "Tokens per minute limit (0 = none)");
  create->callback([f, exit_code] {
    absl::Status status = RunKeysNew(*f);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
