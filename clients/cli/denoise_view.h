// `--visual`: shows the block being denoised after every forward, for `dmoe generate` (from the
// engine's Sequence) and `dmoe client generate` (from the API's canvas events).
//
// Only the generated part of the block is drawn: the prompt tail that shares the first block
// is one "…" marker, masks are ░, special tokens ◇, newlines ⏎, and the tokens the last
// forward committed are highlighted (green); with token editing, positions the last forward
// rewrote (or turned back into a mask) are highlighted differently (yellow) and counted in the
// status line.
// On a terminal the frame is redrawn in place, wrapped to the terminal's width; otherwise each
// step is one plain line (for logs and pipes).
#ifndef DMOE_CLIENTS_CLI_DENOISE_VIEW_H_
#define DMOE_CLIENTS_CLI_DENOISE_VIEW_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace dmoe::cli {

// The block after one forward.
struct Canvas {
  int64_t forward = 0;          // the request's forwards so far
  int64_t block_start = 0;      // absolute position of tokens[0]
  std::vector<int32_t> tokens;  // the block; still-masked positions hold mask_id
  int32_t mask_id = -1;
  int64_t prompt_length = 0;    // positions below this are the prompt
};

struct DenoiseViewOptions {
  bool tty = false;  // redraw in place with ANSI escapes and highlight the last commits
  int width = 80;    // terminal columns (tty only; the frame never wraps on its own)
};

// Thread-compatible.
class DenoiseView {
 public:
  // Text of one token as it would be decoded (raw bytes; the view sanitises it).
  using TokenText = std::function<std::string(int32_t)>;

  DenoiseView(DenoiseViewOptions options, TokenText token_text);

  // What to write to the output for this step.
  std::string Render(const Canvas& canvas);
  // What to write to erase the frame (tty) before the final text; "" otherwise.
  std::string Clear();

 private:
  struct Piece {
    std::string text;
    int width = 0;
    bool fresh = false;   // committed by the last forward
    bool edited = false;  // rewritten (or re-masked) by the last forward: token editing
  };
  std::vector<Piece> Pieces(const Canvas& canvas) const;
  std::string Status(const Canvas& canvas, const std::vector<Piece>& pieces) const;
  std::vector<std::string> Wrap(const std::string& status, const std::vector<Piece>& pieces) const;

  DenoiseViewOptions options_;
  TokenText token_text_;
  int64_t previous_block_start_ = -1;
  std::vector<int32_t> previous_tokens_;
  int lines_on_screen_ = 0;
};

// Columns of the terminal on `fd` (TIOCGWINSZ, else $COLUMNS, else 80).
int TerminalColumns(int fd);

// A token's text from the tokenizer (special tokens as ◇), or "[id]" without one.
DenoiseView::TokenText TokenTextOf(const model::Tokenizer* tokenizer);

// Columns a UTF-8 string takes on a terminal (East Asian wide characters and most emoji 2,
// combining marks 0, everything else 1).
int DisplayWidth(const std::string& utf8);

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_DENOISE_VIEW_H_
