// Element types of checkpoint tensors and the conversions the CPU kernels need.
#ifndef DMOE_COMMON_DTYPE_H_
#define DMOE_COMMON_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dmoe {

// Storage dtypes dmoe reads and writes. Activations are always F32 on the CPU backends.
// kI8 holds the values of q8 weight matrices (docs/quantization.md): a matrix in I8 comes with
// one F32 scale per 32 values of a row, and means nothing without them.
enum class DType { kF32, kF16, kBF16, kI8 };

// Bytes per element.
size_t DTypeSize(DType dtype);
// Safetensors spelling: "F32", "F16", "BF16", "I8".
std::string_view DTypeName(DType dtype);
// Parses the safetensors / config spelling ("BF16", "bfloat16", "float32", ...).
absl::StatusOr<DType> ParseDType(std::string_view name);

// bfloat16 is the high half of an IEEE float32.
inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round-to-nearest-even, as torch's .to(torch.bfloat16); NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

// IEEE half <-> float (exact for every half, round-to-nearest-even the other way).
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts `n` elements of `dtype` at `src` to float (I8: the integer values, unscaled).
void ConvertToF32(DType dtype, const void* src, float* dst, size_t n);

}  // namespace dmoe

#endif  // DMOE_COMMON_DTYPE_H_
