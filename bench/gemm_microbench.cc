// GEMM micro-benchmark (google-benchmark): the few-row GEMVs of routed experts against a plain
// streaming read on one core. Backs the bandwidth figures in docs/bench/engine.md: a routed
// expert sees 1-2 tokens, so its GEMMs are GEMVs that only the memory system can feed.
//
//   build/bin/dmoe-gemm-microbench                        # every case
//   build/bin/dmoe-gemm-microbench --benchmark_filter=Gemv --benchmark_repetitions=5
//
// bytes_per_second is weight bytes (GEMV) or buffer bytes (read) per second, single-threaded.
// The 600 BF16 [128, 512] matrices (79 MB) are larger than the last-level cache, so every
// iteration streams them from memory, as a MoE layer's experts are.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"
#include "model/cpu/gemm.h"
#include "model/weights.h"

namespace dmoe {
namespace {

constexpr int64_t kMatrices = 600;
constexpr int64_t kRows = 128;  // expert intermediate rows (bench-mini moe_intermediate_size)
constexpr int64_t kCols = 512;  // hidden size of bench-mini

// Bits of a BF16 number near `value`: enough for a benchmark (no NaN, no denormals).
uint16_t Bf16Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}

void BM_GemvBf16(benchmark::State& state) {
  const int64_t m = state.range(0);
  std::vector<uint16_t> weights(static_cast<size_t>(kMatrices * kRows * kCols));
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = Bf16Bits(0.001f * (i % 97));
  std::vector<model::WeightMatrix> matrices(kMatrices);
  for (int64_t e = 0; e < kMatrices; ++e) {
    matrices[e] = {.dtype = DType::kBF16,
                   .rows = kRows,
                   .cols = kCols,
                   .data = weights.data() + e * kRows * kCols};
  }
  std::vector<float> x(m * kCols, 0.5f), y(m * kRows);
  std::vector<float> scratch(model::GemmScratchFloats(kCols));
  for (auto _ : state) {
    for (const model::WeightMatrix& w : matrices) {
      model::GemmRows(x.data(), m, w, 0, kRows, y.data(), kRows, scratch.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(weights.size() * 2));
  state.SetLabel(std::string(model::GemmIsa()));
}
BENCHMARK(BM_GemvBf16)->Arg(1)->Arg(2)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond);

// The ceiling for the GEMVs above: one core summing a buffer of the same size.
void BM_StreamRead(benchmark::State& state) {
  std::vector<float> buffer(static_cast<size_t>(kMatrices * kRows * kCols / 2), 1.0f);
  for (auto _ : state) {
    float acc[16] = {};
    for (size_t i = 0; i + 16 <= buffer.size(); i += 16) {
      for (int l = 0; l < 16; ++l) acc[l] += buffer[i + l];
    }
    benchmark::DoNotOptimize(acc);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(buffer.size() * 4));
}
BENCHMARK(BM_StreamRead)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace dmoe

BENCHMARK_MAIN();
