// The progress line's text (the drawing itself only happens on a terminal).
#include "clients/cli/progress.h"

#include <gtest/gtest.h>

namespace dmoe::cli {
namespace {

TEST(ProgressLineTest, CountDetailAndEta) {
  EXPECT_EQ(ProgressLine::Format("samples", 0, 40, "", 0.0), "samples 0/40");
  // 10 of 40 in 5 s: 30 more at 0.5 s each.
  EXPECT_EQ(ProgressLine::Format("samples", 10, 40, "accuracy 50.0%", 5.0),
            "samples 10/40 \u00b7 accuracy 50.0% \u00b7 ETA 15 s");
  EXPECT_EQ(ProgressLine::Format("requests", 8, 8, "12.5 tokens/s", 2.0),
            "requests 8/8 \u00b7 12.5 tokens/s");  // done: no ETA
}

TEST(ProgressLineTest, DisabledLineDrawsNothing) {
  ProgressLine line("requests", 4, /*enabled=*/false);
  testing::internal::CaptureStderr();
  line.Update(1, "x");
  line.Finish();
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

}  // namespace
}  // namespace dmoe::cli
