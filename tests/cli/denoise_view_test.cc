// The --visual renderer on a fixed sequence of canvases: plain lines off a terminal; redraw in
// place, wrapping and highlighting on one.
#include "clients/cli/denoise_view.h"

#include <gtest/gtest.h>

#include <string>

namespace dmoe::cli {
namespace {

constexpr int32_t kMask = 9;

// Token t reads as a letter; 7 is a newline and 8 a wide character.
std::string Text(int32_t t) {
  if (t == 7) return "\n";
  if (t == 8) return "\u4f60";  // 你, two columns
  return std::string(1, static_cast<char>('a' + t));
}

// A block of 8 at position 8 after a 10-token prompt: the first two positions are prompt.
Canvas Step(int64_t forward, std::vector<int32_t> tokens) {
  return {.forward = forward, .block_start = 8, .tokens = std::move(tokens), .mask_id = kMask,
          .prompt_length = 10};
}

TEST(DenoiseViewTest, PlainLinesShowOnlyTheGeneratedPart) {
  DenoiseView view({.tty = false, .width = 80}, Text);
  EXPECT_EQ(view.Render(Step(1, {0, 1, kMask, 2, kMask, kMask, kMask, kMask})),
            "[block @8 \u00b7 forward 1 \u00b7 1/6 filled (16%)] \u2026\u2591c\u2591\u2591\u2591\u2591\n");
  EXPECT_EQ(view.Render(Step(2, {0, 1, 3, 2, 7, kMask, kMask, 4})),
            "[block @8 \u00b7 forward 2 \u00b7 4/6 filled (66%)] \u2026dc\u23ce\u2591\u2591e\n");
  EXPECT_EQ(view.Clear(), "");
}

TEST(DenoiseViewTest, NextBlockHasNoPromptMarker) {
  DenoiseView view({.tty = false, .width = 80}, Text);
  const Canvas next = {.forward = 5, .block_start = 16, .tokens = {0, kMask}, .mask_id = kMask,
                       .prompt_length = 10};
  EXPECT_EQ(view.Render(next), "[block @16 \u00b7 forward 5 \u00b7 1/2 filled (50%)] a\u2591\n");
}

TEST(DenoiseViewTest, TerminalRedrawsInPlaceAndHighlightsTheLastCommits) {
  DenoiseView view({.tty = true, .width = 80}, Text);
  const std::string green = "\033[1;32m", reset = "\033[0m", dim = "\033[2m";
  const std::string status1 = "block @8 \u00b7 forward 1 \u00b7 1/6 filled (16%)";
  EXPECT_EQ(view.Render(Step(1, {0, 1, kMask, 2, kMask, kMask, kMask, kMask})),
            status1 + "\n" + dim + "\u2026" + reset + "\u2591" + green + "c" + reset +
                "\u2591\u2591\u2591\u2591");
  // Second step: the frame (2 lines) is erased first; only the new commit (d) is highlighted.
  const std::string status2 = "block @8 \u00b7 forward 2 \u00b7 2/6 filled (33%)";
  EXPECT_EQ(view.Render(Step(2, {0, 1, 3, 2, kMask, kMask, kMask, kMask})),
            "\033[1A\r\033[J" + status2 + "\n" + dim + "\u2026" + reset + green + "d" + reset +
                "c\u2591\u2591\u2591\u2591");
  EXPECT_EQ(view.Clear(), "\033[1A\r\033[J");
  EXPECT_EQ(view.Clear(), "");
}

// Token editing: a decoded token the forward rewrote, and one it turned back into a mask, are
// highlighted in yellow (fresh commits stay green) and counted in the status line.
TEST(DenoiseViewTest, EditedPositionsAreMarkedApartFromFreshCommits) {
  DenoiseView view({.tty = true, .width = 80}, Text);
  const std::string green = "\033[1;32m", yellow = "\033[1;33m", reset = "\033[0m",
                    dim = "\033[2m";
  (void)view.Render(Step(1, {0, 1, 2, 3, 4, kMask, kMask, kMask}));
  const std::string status = "block @8 \u00b7 forward 2 \u00b7 3/6 filled (50%) \u00b7 2 edited";
  EXPECT_EQ(view.Render(Step(2, {0, 1, 5, kMask, 4, 6, kMask, kMask})),
            "\033[1A\r\033[J" + status + "\n" + dim + "\u2026" + reset + yellow + "f" + reset +
                yellow + "\u2591" + reset + "e" + green + "g" + reset + "\u2591\u2591");

  DenoiseView plain({.tty = false, .width = 80}, Text);
  (void)plain.Render(Step(1, {0, 1, 2, 3, kMask, kMask, kMask, kMask}));
  EXPECT_EQ(plain.Render(Step(2, {0, 1, 5, 3, kMask, kMask, kMask, kMask})),
            "[block @8 \u00b7 forward 2 \u00b7 2/6 filled (33%) \u00b7 1 edited] \u2026fd\u2591\u2591\u2591\u2591\n");
}

TEST(DenoiseViewTest, TerminalWrapsWithinTheWidth) {
  DenoiseView view({.tty = true, .width = 8}, Text);
  // 1 marker + 6 pieces, 你 counted as two columns: "…a你a你a" is 8 wide, the last "a" wraps.
  const Canvas c = {.forward = 3, .block_start = 8, .tokens = {0, 0, 0, 8, 0, 8, 0, 0},
                    .mask_id = kMask, .prompt_length = 10};
  const std::string out = view.Render(c);
  const std::string green = "\033[1;32m", reset = "\033[0m";
  auto g = [&](const std::string& s) { return green + s + reset; };
  EXPECT_EQ(out, std::string("block @8") + "\n" + "\033[2m\u2026\033[0m" + g("a") + g("\u4f60") +
                     g("a") + g("\u4f60") + g("a") + "\n" + g("a"));
  EXPECT_EQ(view.Clear(), "\033[2A\r\033[J");
}

TEST(DenoiseViewTest, DisplayWidthCountsColumns) {
  EXPECT_EQ(DisplayWidth("abc"), 3);
  EXPECT_EQ(DisplayWidth("\u4f60\u597d"), 4);
  EXPECT_EQ(DisplayWidth("e\u0301"), 1);  // e + combining acute
  EXPECT_EQ(DisplayWidth("\u2591\u23ce"), 2);
}

}  // namespace
}  // namespace dmoe::cli
