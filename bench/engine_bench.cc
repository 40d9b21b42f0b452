// Engine benchmark on the miniature LLaDA2.0 (bench-mini preset: vocab 8192, hidden 512,
// 8 layers, 256 experts top-8). Reports, in one run:
//   - time per 32-token block forward over a 64-token cached prefix (fast backend);
//   - the roofline of that forward: max(bytes of weights it touches (non-expert weights +
//     every expert routed >= 1 token) / measured memory read bandwidth, its FLOPs (GEMMs +
//     attention) / measured peak FMA rate of the same threads), which bound applies, and
//     the forward's time over it; the peak comes from a register-only FMA loop (AVX-512 and
//     AVX2), not from BLAS;
//   - a checksum of the forward's logits (FNV-1a over the bits): equal checksums mean
//     bit-identical results, so kernel changes and ISAs can be compared run against run;
//   - GFLOP/s of the fast backend vs the naive reference vs bare OpenBLAS sgemm on the same
//     GEMM shapes (F32 copies, since Debian's OpenBLAS has no BF16 GEMM);
//   - TPS and TPF of diffusion decoding vs block length 1;
//   - peak resident memory vs checkpoint bytes.
// Usage: dmoe-engine-bench [--model DIR] [--repeats N] [--threads N] [--json FILE]
//        dmoe-engine-bench --batch-sizes 1,8,32: batched block forwards, each against its roofline
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "engine/engine.h"
#include "model/cpu/make_kernels.h"
#include "model/cpu/gemm.h"
#include "nlohmann/json.hpp"
#include "tools/checkpoint_gen/random_checkpoint.h"

namespace dmoe {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int64_t PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

// User + system CPU time of every thread of this process. On a shared machine the wall time
// of a forward includes waits for a core; its CPU time does not (A/B runs compare both).
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// "model name" of /proc/cpuinfo, for the table header (machines differ between runs).
std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

// Read bandwidth of this machine: `threads` threads summing a 1 GiB buffer.
double MeasureReadBandwidth(int threads) {
  const size_t n = (size_t{1} << 30) / sizeof(float);
  std::vector<float> buffer(n, 1.0f);
  std::vector<double> times;
  std::atomic<float> sink{0};
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = n / threads * t, end = t + 1 == threads ? n : n / threads * (t + 1);
        float acc[16] = {};
        for (size_t i = begin; i + 16 <= end; i += 16)
          for (int l = 0; l < 16; ++l) acc[l] += buffer[i + l];
        float s = 0;
        for (float a : acc) s += a;
        sink = sink + s;
      });
    }
    for (auto& th : pool) th.join();
    times.push_back(Since(t0));
  }
  return static_cast<double>(n * sizeof(float)) / Median(times);
}

// Peak FMA rate: each thread runs kFmaChains independent FMA chains on registers only (no
// loads or stores in the loop), enough to cover the FMA latency on every FMA port. The loop
// count is calibrated until one run takes >= 100 ms; the best of 5 runs is the peak.
constexpr int kFmaChains = 12;

// 12 named accumulators (an array would live on the stack: GCC keeps an array touched by an
// asm operand in memory). The empty asm after each round stops the compiler from folding or
// reordering the chains but leaves them in registers.
#define DMOE_FMA_LOOP(VEC, SET1, FMA, CONSTRAINT)                                              \
  VEC c0 = SET1(0.00f), c1 = SET1(0.01f), c2 = SET1(0.02f), c3 = SET1(0.03f);                  \
  VEC c4 = SET1(0.04f), c5 = SET1(0.05f), c6 = SET1(0.06f), c7 = SET1(0.07f);                  \
  VEC c8 = SET1(0.08f), c9 = SET1(0.09f), c10 = SET1(0.10f), c11 = SET1(0.11f);                \
  const VEC a = SET1(0.999999f), b = SET1(1e-7f);                                              \
  for (int64_t i = 0; i < iters; ++i) {                                                        \
    c0 = FMA(c0, a, b); c1 = FMA(c1, a, b); c2 = FMA(c2, a, b); c3 = FMA(c3, a, b);            \
    c4 = FMA(c4, a, b); c5 = FMA(c5, a, b); c6 = FMA(c6, a, b); c7 = FMA(c7, a, b);            \
    c8 = FMA(c8, a, b); c9 = FMA(c9, a, b); c10 = FMA(c10, a, b); c11 = FMA(c11, a, b);        \
    asm("" : "+" CONSTRAINT(c0), "+" CONSTRAINT(c1), "+" CONSTRAINT(c2), "+" CONSTRAINT(c3),   \
        "+" CONSTRAINT(c4), "+" CONSTRAINT(c5), "+" CONSTRAINT(c6), "+" CONSTRAINT(c7),        \
        "+" CONSTRAINT(c8), "+" CONSTRAINT(c9), "+" CONSTRAINT(c10), "+" CONSTRAINT(c11));     \
  }                                                                                            \
  const VEC all[kFmaChains] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};

// Return a sum of the lanes so the work is observable.
__attribute__((target("avx512f"))) float FmaLoopAvx512(int64_t iters) {
  DMOE_FMA_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, "v")
  // Stored, not _mm512_reduce_add_ps: GCC 12 warns inside that intrinsic (PR 105593).
  float lanes[16], s = 0;
  for (const __m512& v : all) {
    _mm512_storeu_ps(lanes, v);
    for (float l : lanes) s += l;
  }
  return s;
}

__attribute__((target("avx2,fma"))) float FmaLoopAvx2(int64_t iters) {
  DMOE_FMA_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, "x")
  float lanes[8], s = 0;
  for (const __m256& v : all) {
    _mm256_storeu_ps(lanes, v);
    for (float l : lanes) s += l;
  }
  return s;
}
#undef DMOE_FMA_LOOP

// FLOP/s of `threads` threads each running FmaLoop<width> (2 FLOPs per lane per FMA).
// 0 when this CPU lacks the ISA.
double MeasurePeakFma(int threads, int width) {
  const bool supported = width == 16 ? __builtin_cpu_supports("avx512f")
                                     : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!supported) return 0;
  auto run = [&](int64_t iters) {
    std::atomic<float> sink{0};
    auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        const float s = width == 16 ? FmaLoopAvx512(iters) : FmaLoopAvx2(iters);
        sink = sink + s;
      });
    }
    for (auto& th : pool) th.join();
    return Since(t0);
  };
  int64_t iters = 1 << 16;
  while (run(iters) < 0.1) iters *= 2;
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) best = std::min(best, run(iters));
  return 2.0 * width * kFmaChains * static_cast<double>(iters) * threads / best;
}

// FNV-1a over the bits of every logit: equal values mean bit-identical logits.
uint64_t LogitsChecksum(const std::vector<std::vector<float>>& logits) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& row : logits) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(row.data());
    for (size_t i = 0; i < row.size() * sizeof(float); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  }
  return h;
}

// Records which experts each layer's forward routed tokens to, then runs them locally.
class RecordingExecutor : public model::ExpertExecutor {
 public:
  RecordingExecutor(const model::ModelWeights& w, model::Kernels& k) : local_(w, k) {}
  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t n, int64_t h,
                          const model::Routing& routing, float* out) override {
    std::vector<int64_t>& counts = tokens_per_expert[layer];
    counts.resize(std::max<size_t>(counts.size(), 4096), 0);
    for (int32_t e : routing.experts) ++counts[e];
    return local_.RunExperts(layer, hidden, n, h, routing, out);
  }
  std::map<int64_t, std::vector<int64_t>> tokens_per_expert;

 private:
  model::LocalExpertExecutor local_;
};

struct GemmShape {
  int64_t m, n, k;
};

struct BlockForwardFigures {
  double seconds = 0;
  double cpu_seconds = 0;  // process CPU time (all threads) per forward, median
  double best_seconds = 0;  // fastest repeat: on a shared machine the least disturbed one
  model::ForwardStats stats;
  uint64_t bytes_touched = 0;
  double flops = 0;            // GEMMs + attention
  double attention_flops = 0;  // QK^T and PV of the block's queries
  uint64_t logits_checksum = 0;
  std::vector<GemmShape> gemms;
  double experts_touched_per_layer = 0;
};

// Times a 32-token block forward over a 64-token cached prefix, for `batch` sequences at once
// (one batched forward: their rows routed to one expert form one GEMM).
BlockForwardFigures TimeBlockForward(engine::Engine& engine, model::Kernels& kernels, int repeats,
                                     int batch = 1) {
  const model::ModelConfig& c = engine.config();
  const model::ModelWeights& w = engine.model().weights();
  RecordingExecutor recorder(w, kernels);
  model::KvCachePool pool(engine.model().KvOptions(32, 16 + 4 * batch));
  std::vector<std::unique_ptr<model::KvSequence>> kvs;
  std::vector<std::vector<int32_t>> blocks(batch);
  std::vector<model::ForwardSegment> prefill(batch);
  std::vector<std::vector<int32_t>> prefixes(batch);
  for (int s = 0; s < batch; ++s) {
    kvs.push_back(std::make_unique<model::KvSequence>(&pool));
    prefixes[s].resize(64);
    blocks[s].resize(32);
    for (int i = 0; i < 64; ++i) prefixes[s][i] = (i * 131 + 7 + s * 17) % 8000;
    for (int i = 0; i < 32; ++i) blocks[s][i] = (i * 977 + 3 + s * 29) % 8000;
    prefill[s] = {.kv = kvs[s].get(), .start = 0, .tokens = prefixes[s], .persist = 64,
                  .attention_block = 32, .logits_from = 64};
  }
  (void)engine.model().Forward(prefill, kernels, recorder);

  BlockForwardFigures out;
  // Every figure is the median over the repeats, the phases too (each phase on its own, so
  // they need not add up to the median total exactly).
  std::vector<double> times, cpu_times, attention, moe, head;
  for (int r = 0; r < repeats; ++r) {
    recorder.tokens_per_expert.clear();
    std::vector<model::ForwardSegment> seg(batch);
    for (int b = 0; b < batch; ++b) {
      seg[b] = {.kv = kvs[b].get(), .start = 64, .tokens = blocks[b], .persist = 0,
                .attention_block = 32};
    }
    model::ForwardStats stats;
    const double cpu0 = ProcessCpuSeconds();
    auto t0 = Clock::now();
    auto logits = engine.model().Forward(seg, kernels, recorder, &stats);
    times.push_back(Since(t0));
    cpu_times.push_back(ProcessCpuSeconds() - cpu0);
    if (logits.ok()) out.logits_checksum = LogitsChecksum(*logits);
    attention.push_back(stats.attention_seconds);
    moe.push_back(stats.moe_seconds);
    head.push_back(stats.head_seconds);
  }
  out.seconds = Median(times);
  out.cpu_seconds = Median(cpu_times);
  out.best_seconds = *std::min_element(times.begin(), times.end());
  out.stats = {.attention_seconds = Median(attention),
               .moe_seconds = Median(moe),
               .head_seconds = Median(head)};

  // Bytes and FLOPs of that forward (GEMMs; attention and elementwise work are small here).
  const int64_t t = 32 * static_cast<int64_t>(batch), h = c.hidden_size;
  uint64_t bytes = w.lm_head.nbytes();
  auto add = [&](const model::WeightMatrix& m, int64_t rows) {
    out.gemms.push_back({rows, m.rows, m.cols});
    out.flops += 2.0 * rows * m.rows * m.cols;
  };
  add(w.lm_head, t);
  int64_t experts_touched = 0, moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const model::LayerWeights& lw = w.layers[l];
    bytes += lw.qkv.nbytes() + lw.o_proj.nbytes() + lw.dense.nbytes() + lw.router.nbytes() +
             lw.shared.nbytes();
    add(lw.qkv, t);
    add(lw.o_proj, t);
    for (const auto* f : {&lw.dense, &lw.shared}) {
      if (f->empty()) continue;
      add(f->gate, t);
      add(f->up, t);
      add(f->down, t);
    }
    if (!lw.router.empty()) add(lw.router, t);
    auto it = recorder.tokens_per_expert.find(l);
    if (it == recorder.tokens_per_expert.end()) continue;
    ++moe_layers;
    for (size_t e = 0; e < it->second.size(); ++e) {
      const int64_t m = it->second[e];
      if (m == 0) continue;
      ++experts_touched;
      bytes += lw.experts[e].nbytes();
      add(lw.experts[e].gate, m);
      add(lw.experts[e].up, m);
      add(lw.experts[e].down, m);
    }
  }
  (void)h;
  // Attention: every query of the block sees the 64 cached keys and the block's 32 (block
  // causal mask over whole blocks); QK^T and PV are 2 FLOPs per (query, key, head, dim) each.
  const int64_t keys = 64 + 32;
  out.attention_flops = 4.0 * c.num_hidden_layers * t * keys * c.q_width();
  out.flops += out.attention_flops;
  out.bytes_touched = bytes;
  out.experts_touched_per_layer = moe_layers ? double(experts_touched) / moe_layers : 0;
  return out;
}

// Bare OpenBLAS sgemm over the same shapes with F32 weights (y = x W^T).
double TimeBlasGemms(const std::vector<GemmShape>& shapes, int repeats) {
  int64_t max_x = 0, max_w = 0, max_y = 0;
  for (const GemmShape& s : shapes) {
    max_x = std::max(max_x, s.m * s.k);
    max_y = std::max(max_y, s.m * s.n);
  }
  // Each GEMM gets its own weight buffer so the benchmark streams weights as the engine does.
  std::vector<std::vector<float>> weights;
  for (const GemmShape& s : shapes) {
    weights.emplace_back(s.n * s.k, 0.01f);
    max_w = std::max(max_w, s.n * s.k);
  }
  std::vector<float> x(max_x, 0.5f), y(max_y);
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    for (size_t i = 0; i < shapes.size(); ++i) {
      const GemmShape& s = shapes[i];
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.m, s.n, s.k, 1.0f, x.data(), s.k,
                  weights[i].data(), s.k, 0.0f, y.data(), s.n);
    }
    times.push_back(Since(t0));
  }
  return Median(times);
}

struct DecodeFigures {
  double tps = 0, tpf = 0;
  int64_t tokens = 0, forwards = 0;
};

DecodeFigures TimeDecode(engine::Engine& engine, int64_t block_length) {
  engine::GenerationParams p;
  p.block_length = block_length;
  p.max_new_tokens = 64;
  p.threshold = 0.95f;
  p.mask_id = 8000;  // bench-mini has no tokenizer ids above 8000
  p.stop_ids = {};
  std::vector<int32_t> prompt(32);  // block-aligned: 32 + 64 decodes exactly 64 positions
  for (int i = 0; i < 32; ++i) prompt[i] = (i * 37 + 11) % 8000;
  auto t0 = Clock::now();
  auto results = engine.Generate({{prompt, p}});
  double s = Since(t0);
  DecodeFigures f;
  if (!results.ok()) return f;
  f.tokens = static_cast<int64_t>((*results)[0].ids.size());
  f.forwards = (*results)[0].forwards;
  f.tps = f.tokens / s;
  f.tpf = (*results)[0].tokens_per_forward();
  return f;
}

// Batching (issue 13 item 4): for each batch size, one forward of that many 32-token blocks
// against its roofline — max(weight bytes it touches / read bandwidth, its FLOPs / peak FMA) —
// and the share of that prediction the measured forward reaches.
void PrintBatchingTable(engine::Engine& engine, const std::vector<int>& batch_sizes, int repeats,
                        double bandwidth, double peak, const std::string& isa, int n_threads) {
  std::printf("## Batched block forward vs its roofline: bench-mini, %d threads, %s kernels\n\n",
              n_threads, isa.c_str());
  std::printf("CPU: %s; measured read bandwidth %.2f GB/s, peak FMA %.1f GFLOP/s (%s); medians "
              "of %d runs.\n\n",
              CpuModelName().c_str(), bandwidth / 1e9, peak / 1e9, isa.c_str(), repeats);
  std::printf("| sequences | forward (ms) | experts touched / layer | weight bytes (MB) | GFLOP | "
              "bytes time (ms) | compute time (ms) | roofline (ms) | bound | positions/s "
              "measured | predicted | measured / predicted |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n");
  for (int batch : batch_sizes) {
    if (batch < 1) continue;
    std::fprintf(stderr, "measuring a batched forward of %d block(s) ...\n", batch);
    const BlockForwardFigures f = TimeBlockForward(engine, engine.kernels(), repeats, batch);
    const double bytes_s = f.bytes_touched / bandwidth;
    const double compute_s = peak > 0 ? f.flops / peak : 0;
    const double roof = std::max(bytes_s, compute_s);
    const double positions = 32.0 * batch;
    std::printf("| %d | %.2f | %.1f | %.1f | %.3f | %.2f | %.2f | %.2f | %s | %.0f | %.0f | "
                "%.0f%% |\n",
                batch, f.seconds * 1e3, f.experts_touched_per_layer, f.bytes_touched / 1e6,
                f.flops / 1e9, bytes_s * 1e3, compute_s * 1e3, roof * 1e3,
                bytes_s >= compute_s ? "memory" : "compute", positions / f.seconds,
                positions / roof, 100 * roof / f.seconds);
  }
  std::printf("\nTokens/s follow as positions/s x TPF / 32 (TPF: tokens committed per block "
              "forward), the same factor for measured and predicted.\n");
}

int Run(int argc, char** argv) {
  std::string model_dir = "build/bench-mini";
  int repeats = 5, threads = 0;
  std::string json_path;
  bool forward_only = false;
  CLI::App app{"dmoe engine benchmark (miniature LLaDA2.0)"};
  app.add_option("--model", model_dir, "bench-mini checkpoint (created if missing)");
  app.add_option("--repeats", repeats, "timed repetitions (median reported)");
  app.add_option("--threads", threads, "compute threads (0 = all)");
  app.add_option("--json", json_path, "also write the figures as JSON");
  app.add_flag("--forward-only", forward_only,
               "only the block forward and its roofline (for profiling and A/B runs)");
  std::vector<int> batch_sizes;
  app.add_option("--batch-sizes", batch_sizes,
                 "instead of the full report: a batched block forward of each of these many "
                 "sequences against its own roofline (e.g. 1,8,32)")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);

  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "config.json")) {
    std::fprintf(stderr, "writing bench-mini checkpoint to %s ...\n", model_dir.c_str());
    tools::RandomCheckpointSpec spec = tools::BenchMiniCheckpointSpec();
    spec.tokenizer_dir = "";
    // A trained router's balancing bias is small next to its scores; a large random one would
    // herd every token into the same groups and understate the experts a block touches.
    spec.expert_bias_std = 0.0;
    if (auto s = tools::WriteRandomCheckpoint(spec, model_dir); !s.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  const int64_t rss_before = PeakRssBytes();
  auto engine_or = engine::Engine::Create({.model_dir = model_dir, .num_threads = threads});
  if (!engine_or.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(engine_or.status().message()).c_str());
    return 1;
  }
  engine::Engine& engine = **engine_or;
  const uint64_t checkpoint_bytes = engine.checkpoint().TotalTensorBytes();
  const int n_threads = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());

  std::fprintf(stderr, "measuring block forward (fast backend, %s GEMM) ...\n",
               std::string(model::GemmIsa()).c_str());
  BlockForwardFigures fast = TimeBlockForward(engine, engine.kernels(), repeats);
  DecodeFigures diffusion, one;
  BlockForwardFigures ref;
  double blas_seconds = 0;
  int64_t peak_rss = 0;
  if (!forward_only) {
    std::fprintf(stderr, "measuring decode TPS/TPF ...\n");
    diffusion = TimeDecode(engine, 32);
    one = TimeDecode(engine, 1);
    peak_rss = PeakRssBytes();
    std::fprintf(stderr, "measuring reference backend ...\n");
    auto reference = model::MakeKernels("reference", 1);
    ref = TimeBlockForward(engine, **reference, 1);
    std::fprintf(stderr, "measuring OpenBLAS sgemm on the same shapes ...\n");
    blas_seconds = TimeBlasGemms(fast.gemms, repeats);
  }
  std::fprintf(stderr, "measuring memory bandwidth ...\n");
  const double bandwidth = MeasureReadBandwidth(n_threads);

  std::fprintf(stderr, "measuring peak FMA rate (register-only loop) ...\n");
  const double peak_avx512 = MeasurePeakFma(n_threads, 16);
  const double peak_avx2 = MeasurePeakFma(n_threads, 8);
  const std::string isa(model::GemmIsa());
  // The compute roof is the peak of the ISA the kernels run (the generic path gets AVX2's,
  // which is what its auto-vectorised loops can reach at best).
  const double peak = isa == "avx512" ? peak_avx512 : peak_avx2;

  if (!batch_sizes.empty()) {
    PrintBatchingTable(engine, batch_sizes, repeats, bandwidth, peak, isa, n_threads);
    return 0;
  }
  const double achieved = fast.bytes_touched / fast.seconds;
  const double bytes_seconds = fast.bytes_touched / bandwidth;
  const double compute_seconds = peak > 0 ? fast.flops / peak : 0;
  const double roofline_seconds = std::max(bytes_seconds, compute_seconds);
  const char* bound = bytes_seconds >= compute_seconds ? "memory" : "compute";
  std::printf("## dmoe engine benchmark: bench-mini (%s), %d threads, %s kernels\n\n",
              model_dir.c_str(), n_threads, isa.c_str());
  std::printf("CPU: %s; measured read bandwidth %.2f GB/s, peak FMA %.1f GFLOP/s AVX-512 / "
              "%.1f GFLOP/s AVX2 (%d threads); medians of %d runs.\n\n",
              CpuModelName().c_str(), bandwidth / 1e9, peak_avx512 / 1e9, peak_avx2 / 1e9,
              n_threads, repeats);
  std::printf("| figure | value |\n|---|---|\n");
  std::printf("| block forward (32 tokens over 64 cached), fast backend | %.2f ms |\n", fast.seconds * 1e3);
  std::printf("| block forward, fastest of the %d repeats (best / roofline) | %.2f ms (%.2fx) |\n",
              repeats, fast.best_seconds * 1e3, fast.best_seconds / roofline_seconds);
  std::printf("| CPU time of that forward, all threads (busy cores = %.2f) | %.2f ms |\n",
              fast.cpu_seconds / fast.seconds, fast.cpu_seconds * 1e3);
  std::printf("|   phases (medians): attention+norms / MoE+dense FFN / lm_head | %.2f / %.2f / %.2f ms |\n",
              fast.stats.attention_seconds * 1e3, fast.stats.moe_seconds * 1e3,
              fast.stats.head_seconds * 1e3);
  std::printf("| logits checksum (FNV-1a of the bits) | %016llx |\n",
              static_cast<unsigned long long>(fast.logits_checksum));
  std::printf("| experts touched per MoE layer | %.1f of 256 |\n", fast.experts_touched_per_layer);
  std::printf("| weight bytes touched by that forward | %.1f MB |\n", fast.bytes_touched / 1e6);
  std::printf("| FLOPs of that forward (GEMMs + attention) | %.3f GFLOP (attention %.3f) |\n",
              fast.flops / 1e9, fast.attention_flops / 1e9);
  std::printf("| achieved weight read rate | %.2f GB/s |\n", achieved / 1e9);
  std::printf("| measured memory read bandwidth (%d threads) | %.2f GB/s |\n", n_threads, bandwidth / 1e9);
  std::printf("| measured peak FMA rate, %s (%d threads) | %.1f GFLOP/s |\n", isa == "avx512" ? "AVX-512" : "AVX2",
              n_threads, peak / 1e9);
  std::printf("| bytes time (bytes / bandwidth) | %.2f ms |\n", bytes_seconds * 1e3);
  std::printf("| compute time (FLOPs / peak) | %.2f ms |\n", compute_seconds * 1e3);
  std::printf("| roofline = max of the two (%s-bound) | %.2f ms |\n", bound, roofline_seconds * 1e3);
  std::printf("| **block forward / roofline** | **%.2fx** (%s-bound; goal <= 1.3x) |\n",
              fast.seconds / roofline_seconds, bound);
  std::printf("| fast backend (whole forward) | %.1f GFLOP/s |\n", fast.flops / fast.seconds / 1e9);
  if (forward_only) return 0;
  std::printf("| naive reference (whole forward, 1 thread) | %.2f GFLOP/s (%.0f ms) |\n",
              ref.flops / ref.seconds / 1e9, ref.seconds * 1e3);
  std::printf("| bare OpenBLAS sgemm, same shapes, F32 weights | %.1f GFLOP/s (%.2f ms) |\n",
              fast.flops / blas_seconds / 1e9, blas_seconds * 1e3);
  std::printf("| diffusion (block 32, threshold 0.95): TPS / TPF | %.1f / %.2f (%lld tokens, %lld forwards) |\n",
              diffusion.tps, diffusion.tpf, (long long)diffusion.tokens, (long long)diffusion.forwards);
  std::printf("| block length 1: TPS / TPF | %.1f / %.2f (%lld tokens, %lld forwards) |\n", one.tps,
              one.tpf, (long long)one.tokens, (long long)one.forwards);
  std::printf("| peak RSS (model + decoding) / checkpoint bytes | %.1f MB / %.1f MB = %.2fx (goal <= 1.25x) |\n",
              peak_rss / 1e6, checkpoint_bytes / 1e6, double(peak_rss) / checkpoint_bytes);
  std::printf("\nRandom weights give near-uniform confidences, so threshold decoding commits ~1 token "
              "per forward here; see the trained model (issue 4) for real TPF.\n");
  (void)rss_before;

  if (!json_path.empty()) {
    nlohmann::json j = {{"block_forward_ms", fast.seconds * 1e3},
                        {"bytes_touched", fast.bytes_touched},
                        {"bandwidth_gbps", bandwidth / 1e9},
                        {"roofline_ratio", fast.seconds / roofline_seconds},
                        {"roofline_bound", bound},
                        {"block_forward_cpu_ms", fast.cpu_seconds * 1e3},
                        {"block_forward_best_ms", fast.best_seconds * 1e3},
                        {"bytes_ms", bytes_seconds * 1e3},
                        {"compute_ms", compute_seconds * 1e3},
                        {"flops", fast.flops},
                        {"peak_fma_avx512_gflops", peak_avx512 / 1e9},
                        {"peak_fma_avx2_gflops", peak_avx2 / 1e9},
                        {"kernels_isa", isa},
                        {"logits_checksum", fast.logits_checksum},
                        {"attention_ms", fast.stats.attention_seconds * 1e3},
                        {"moe_ms", fast.stats.moe_seconds * 1e3},
                        {"head_ms", fast.stats.head_seconds * 1e3},
                        {"cpu", CpuModelName()},
                        {"fast_gflops", fast.flops / fast.seconds / 1e9},
                        {"reference_gflops", ref.flops / ref.seconds / 1e9},
                        {"blas_gflops", fast.flops / blas_seconds / 1e9},
                        {"diffusion_tps", diffusion.tps},
                        {"diffusion_tpf", diffusion.tpf},
                        {"block1_tps", one.tps},
                        {"block1_tpf", one.tpf},
                        {"peak_rss_bytes", peak_rss},
                        {"checkpoint_bytes", checkpoint_bytes}};
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace dmoe

int main(int argc, char** argv) { return dmoe::Run(argc, argv); }
