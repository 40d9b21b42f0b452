#include "common/grpc_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace dmoe {
namespace {
// Both enums number google.rpc.Code: OK = 0 ... UNAUTHENTICATED = 16.
constexpr int kMaxCode = 16;
}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    size_t cut = kMaxStatusMessageBytes - 64;  // room for the note
    while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;
    message = absl::StrCat(message.substr(0, cut), "... (message cut: ", status.message().size(),
                           " bytes)");
  }
  return grpc::Status(
      code > 0 && code <= kMaxCode ? static_cast<grpc::StatusCode>(code) : grpc::StatusCode::UNKNOWN,
      message);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  return absl::Status(
      code > 0 && code <= kMaxCode ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown,
      status.error_message());
}

}  // namespace dmoe
