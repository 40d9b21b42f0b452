// The gRPC side of API keys (common/auth/api_keys.h): the key a call presents in its
// `authorization: Bearer KEY` metadata, checked and charged against its tenant's limits.
#ifndef DMOE_COMMON_AUTH_AUTHORIZE_H_
#define DMOE_COMMON_AUTH_AUTHORIZE_H_

#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "common/auth/api_keys.h"
#include "grpcpp/server_context.h"

namespace dmoe::auth {

// The metadata key and scheme callers send (lowercase: gRPC metadata keys are).
inline constexpr char kAuthorizationMetadata[] = "authorization";
inline constexpr absl::string_view kBearerPrefix = "Bearer ";

// The KEY of "Bearer KEY" (scheme case-insensitive, surrounding spaces trimmed); nullopt when
// the value has another form.
std::optional<std::string> ParseBearer(absl::string_view header_value);

// The call's bearer token; nullopt when there is none or it is not "Bearer KEY".
std::optional<std::string> BearerToken(const grpc::ServerContextBase& context);

// Admits the call. `keys` null means auth is off: an empty Admission, always OK. Otherwise
// ApiKeys::Admit's codes: UNAUTHENTICATED (no or unknown key), PERMISSION_DENIED (user key on
// an admin route), RESOURCE_EXHAUSTED (a tenant limit, with a retry hint). The returned
// Admission must live as long as the call (it holds a stream slot for kGeneration).
absl::StatusOr<Admission> Authorize(const grpc::ServerContextBase& context, ApiKeys* keys,
                                    Role required, CallKind kind);

}  // namespace dmoe::auth

#endif  // DMOE_COMMON_AUTH_AUTHORIZE_H_
