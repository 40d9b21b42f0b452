// Weight-only int8 ("q8") checkpoints (docs/quantization.md): every large matrix of a
// checkpoint becomes I8 values plus one F32 scale per 32 values of a row; the router, norms
// and expert bias stay as they are. `dmoe quantize` writes them; every command loads them
// (model/weights.h, WeightMatrix::scales).
#ifndef DMOE_MODEL_QUANTIZE_H_
#define DMOE_MODEL_QUANTIZE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace dmoe::model {

// One row of `cols` values (cols % kQ8Block == 0) to q8: per block of 32,
// scale = max|v| / 127 and q = nearbyint(v / scale) (round half to even), clamped to
// [-127, 127]; an all-zero block has scale 0. |q * scale - v| <= scale / 2 (up to F32
// rounding of the division).
void QuantizeRowQ8(const float* values, int64_t cols, int8_t* q, float* scales);

// Whether the checkpoint tensor `name` of shape [rows, cols] is one of the matrices q8 stores
// as I8: the embedding, lm_head, attention qkv/dense, and every FFN's gate/up/down (dense,
// shared, routed experts), when cols is a multiple of 32. Not the router (mlp.gate.weight).
bool QuantizesToQ8(const std::string& name, int64_t rows, int64_t cols);

struct QuantizeOptions {
  std::string in_dir;
  std::string out_dir;        // created; must not exist or be empty
  std::string format = "q8";  // the only one so far
  // Told after each tensor (done, total) and file; may be null.
  std::function<void(const std::string& line)> progress = nullptr;
};

// Writes out_dir: the same safetensors file names (and index, with the scale tensors added),
// config.json with "quantization_config": {"quant_method": "dmoe_q8", "bits": 8,
// "block_size": 32}, every other file (tokenizer, chat template, model card) copied. One
// tensor in memory at a time. INVALID_ARGUMENT for an unknown format, an input that is
// already q8, or out_dir non-empty or the input itself; errors of Checkpoint::Open as they are.
absl::Status QuantizeCheckpoint(const QuantizeOptions& options);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_QUANTIZE_H_
