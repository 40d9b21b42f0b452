// ToGrpcStatus / FromGrpcStatus: codes copied both ways; long messages (which may quote a
// caller's megabyte of input) cut to a size a peer's metadata limit accepts, on a UTF-8
// character boundary.
#include "common/grpc_status.h"

#include <string>

#include "gtest/gtest.h"

namespace dmoe {
namespace {

TEST(GrpcStatusTest, CodesAndShortMessagesPassUnchanged) {
  const grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError("params.stop: too many"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "params.stop: too many");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const absl::Status back = FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "x"));
  EXPECT_EQ(back.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(back.message(), "x");
}

TEST(GrpcStatusTest, LongMessagesAreCutOnACharacterBoundary) {
  // "é" is two bytes: a cut at any byte offset may fall inside one.
  std::string quoted;
  for (int i = 0; i < 600000; ++i) quoted += "\xc3\xa9";
  const grpc::Status s =
      ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("unknown model '", quoted, "'")));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LE(s.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_EQ(s.error_message().rfind("unknown model '", 0), 0u);
  EXPECT_NE(s.error_message().find("(message cut: 1200016 bytes)"), std::string::npos)
      << s.error_message().substr(s.error_message().size() - 80);
  // Every byte before the note belongs to a whole character.
  const std::string kept = s.error_message().substr(0, s.error_message().find("..."));
  EXPECT_EQ((kept.size() - std::string("unknown model '").size()) % 2, 0u);
}

}  // namespace
}  // namespace dmoe
