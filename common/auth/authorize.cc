#include "common/auth/authorize.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace dmoe::auth {

std::optional<std::string> ParseBearer(absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  if (value.size() <= kBearerPrefix.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kBearerPrefix.size()), kBearerPrefix)) {
    return std::nullopt;
  }
  absl::string_view key = absl::StripAsciiWhitespace(value.substr(kBearerPrefix.size()));
  if (key.empty()) return std::nullopt;
  return std::string(key);
}

std::optional<std::string> BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kAuthorizationMetadata);
  if (it == metadata.end()) return std::nullopt;
  return ParseBearer(absl::string_view(it->second.data(), it->second.size()));
}

absl::StatusOr<Admission> Authorize(const grpc::ServerContextBase& context, ApiKeys* keys,
                                    Role required, CallKind kind) {
  if (keys == nullptr) return Admission();
  std::optional<std::string> token = BearerToken(context);
  if (!token) return keys->Admit(std::nullopt, required, kind);
  return keys->Admit(*token, required, kind);
}

}  // namespace dmoe::auth
