// Every fast CPU op against the naive reference (STYLE.md §10): NMSE per dtype, odd shapes,
// guard regions after every output, and batch invariance (bit-identical rows whatever the batch).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "model/cpu/fast_kernels.h"
#include "model/cpu/gemm.h"
#include "model/cpu/reference_kernels.h"
#include "model/quantize.h"
#include "tests/testing/nmse.h"

namespace dmoe::model {
namespace {

using ::dmoe_testing::Nmse;

constexpr float kGuard = 12345.678f;
constexpr int kGuardLen = 64;

// A buffer with a sentinel region after its n elements.
struct Guarded {
  explicit Guarded(size_t n) : n(n), data(n + kGuardLen, kGuard) {}
  float* get() { return data.data(); }
  absl::Span<const float> values() const { return {data.data(), n}; }
  bool GuardIntact() const {
    for (size_t i = n; i < data.size(); ++i)
      if (data[i] != kGuard) return false;
    return true;
  }
  size_t n;
  std::vector<float> data;
};

std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng) * scale;
  return v;
}

// Weight storage in a given dtype (kI8: q8, cols a multiple of 32, with its scales).
struct StoredMatrix {
  StoredMatrix(DType dtype, int64_t rows, int64_t cols, uint32_t seed) {
    std::vector<float> values = RandomVector(rows * cols, seed, 0.5f);
    bytes.resize(values.size() * DTypeSize(dtype));
    if (dtype == DType::kI8) {
      scales.resize(rows * cols / kQ8Block);
      for (int64_t r = 0; r < rows; ++r) {
        QuantizeRowQ8(&values[r * cols], cols, reinterpret_cast<int8_t*>(&bytes[r * cols]),
                      &scales[r * cols / kQ8Block]);
      }
      matrix = {dtype, rows, cols, bytes.data(), scales.data()};
      return;
    }
    for (size_t i = 0; i < values.size(); ++i) {
      if (dtype == DType::kF32) {
        std::memcpy(&bytes[i * 4], &values[i], 4);
      } else {
        uint16_t h = dtype == DType::kBF16 ? F32ToBf16(values[i]) : F32ToF16(values[i]);
        std::memcpy(&bytes[i * 2], &h, 2);
      }
    }
    matrix = {dtype, rows, cols, bytes.data()};
  }
  std::vector<char> bytes;
  std::vector<float> scales;
  WeightMatrix matrix;
};

class KernelsTest : public ::testing::Test {
 protected:
  ReferenceKernels ref_;
  FastKernels fast_{{.num_threads = 2}};
};

TEST_F(KernelsTest, MatMulMatchesReferenceForEveryDtypeAndOddShapes) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t m : {1, 2, 3, 33}) {
      for (int64_t k : {1, 15, 16, 17, 100}) {
        for (int64_t n : {1, 5, 63}) {
          StoredMatrix w(dtype, n, k, static_cast<uint32_t>(m * 1000 + k * 10 + n));
          std::vector<float> x = RandomVector(m * k, 7);
          Guarded y_ref(m * n), y_fast(m * n);
          ref_.MatMul(x.data(), m, w.matrix, y_ref.get());
          fast_.MatMul(x.data(), m, w.matrix, y_fast.get());
          EXPECT_LT(Nmse(y_fast.values(), y_ref.values()), 1e-10)
              << DTypeName(dtype) << " m=" << m << " k=" << k << " n=" << n;
          EXPECT_TRUE(y_fast.GuardIntact()) << "m=" << m << " k=" << k << " n=" << n;
        }
      }
    }
  }
}

// q8: the reference dequantizes value by value, the fast path a row at a time into F32.
TEST_F(KernelsTest, Q8MatMulMatchesReferenceForOddShapes) {
  for (int64_t m : {1, 2, 5, 7, 32, 33}) {
    for (int64_t k : {32, 96, 512}) {
      for (int64_t n : {1, 5, 63}) {
        StoredMatrix w(DType::kI8, n, k, static_cast<uint32_t>(m * 1000 + k * 10 + n));
        std::vector<float> x = RandomVector(m * k, 7);
        Guarded y_ref(m * n), y_fast(m * n);
        ref_.MatMul(x.data(), m, w.matrix, y_ref.get());
        fast_.MatMul(x.data(), m, w.matrix, y_fast.get());
        EXPECT_LT(Nmse(y_fast.values(), y_ref.values()), 1e-10)
            << "m=" << m << " k=" << k << " n=" << n;
        EXPECT_TRUE(y_fast.GuardIntact()) << "m=" << m << " k=" << k << " n=" << n;
      }
    }
  }
}

// BF16 (widened in registers at one row, into scratch at nine) and q8 (always into scratch).
TEST_F(KernelsTest, MatMulRowsAreBitIdenticalWhateverTheBatch) {
  for (auto [dtype, k] :
       {std::pair{DType::kBF16, int64_t{130}}, std::pair{DType::kI8, int64_t{128}}}) {
    StoredMatrix w(dtype, 37, k, 3);
    std::vector<float> x = RandomVector(9 * k, 11);
    std::vector<float> all(9 * 37), one(37);
    fast_.MatMul(x.data(), 9, w.matrix, all.data());
    for (int64_t r = 0; r < 9; ++r) {
      fast_.MatMul(x.data() + r * k, 1, w.matrix, one.data());
      EXPECT_EQ(0, std::memcmp(one.data(), all.data() + r * 37, 37 * sizeof(float)))
          << DTypeName(dtype) << " row " << r;
    }
  }
}

TEST_F(KernelsTest, RmsNormMatchesReference) {
  for (int64_t n : {1, 7, 64, 129}) {
    std::vector<float> x = RandomVector(5 * n, 1), w = RandomVector(n, 2);
    Guarded a(5 * n), b(5 * n);
    ref_.RmsNorm(x.data(), 5, n, w.data(), 1e-6f, a.get());
    fast_.RmsNorm(x.data(), 5, n, w.data(), 1e-6f, b.get());
    EXPECT_LT(Nmse(b.values(), a.values()), 1e-12) << n;
    EXPECT_TRUE(b.GuardIntact());
  }
}

TEST_F(KernelsTest, QkNormRopeMatchesReference) {
  QkNormRopeParams p{.num_heads = 4, .num_kv_heads = 2, .head_dim = 16, .rotary_dim = 8,
                     .eps = 1e-6f, .rope_theta = 600000.0};
  std::vector<float> qn = RandomVector(16, 5), kn = RandomVector(16, 6);
  p.q_norm = qn.data();
  p.k_norm = kn.data();
  const int64_t width = (4 + 2 * 2) * 16, m = 7;
  std::vector<int64_t> pos = {0, 1, 2, 31, 32, 1000, 20000};
  std::vector<float> a = RandomVector(m * width, 9), b = a;
  ref_.QkNormRope(a.data(), m, pos.data(), p);
  fast_.QkNormRope(b.data(), m, pos.data(), p);
  EXPECT_LT(Nmse(b, a), 1e-12);
}

TEST_F(KernelsTest, RopeRotatesOnlyTheRotaryDims) {
  QkNormRopeParams p{.num_heads = 1, .num_kv_heads = 1, .head_dim = 8, .rotary_dim = 4};
  std::vector<float> x(3 * 8);
  for (int i = 0; i < 24; ++i) x[i] = static_cast<float>(i + 1);
  std::vector<float> before = x;
  int64_t pos = 5;
  ref_.QkNormRope(x.data(), 1, &pos, p);
  for (int h = 0; h < 3; ++h) {
    for (int d = 4; d < 8; ++d) EXPECT_EQ(x[h * 8 + d], before[h * 8 + d]);  // pass-through
  }
  // NeoX pairing (0, 2) with inv_freq[0] = 1: angle = 5.
  EXPECT_NEAR(x[0], 1 * std::cos(5.0f) - 3 * std::sin(5.0f), 1e-5);
  EXPECT_NEAR(x[2], 3 * std::cos(5.0f) + 1 * std::sin(5.0f), 1e-5);
}

TEST_F(KernelsTest, AttentionMatchesReferenceUnderBlockCausalMask) {
  const int64_t heads = 4, kv_heads = 2, d = 16, keys = 70, queries = 32;
  std::vector<float> q = RandomVector(queries * heads * d, 1);
  std::vector<float> k = RandomVector(keys * kv_heads * d, 2), v = RandomVector(keys * kv_heads * d, 3);
  std::vector<const float*> k_rows, v_rows;
  std::vector<int64_t> k_pos, q_pos;
  for (int64_t j = 0; j < keys; ++j) {
    k_rows.push_back(&k[j * kv_heads * d]);
    v_rows.push_back(&v[j * kv_heads * d]);
    k_pos.push_back(j);
  }
  for (int64_t i = 0; i < queries; ++i) q_pos.push_back(38 + i);  // spans blocks 1 and 2
  for (int64_t block : {1, 32}) {
    Guarded a(queries * heads * d), b(queries * heads * d);
    AttentionArgs args{.num_queries = queries, .q = q.data(), .q_stride = heads * d,
                       .q_positions = q_pos.data(), .num_keys = keys, .k_rows = k_rows.data(),
                       .v_rows = v_rows.data(), .k_positions = k_pos.data(), .block = block,
                       .num_heads = heads, .num_kv_heads = kv_heads, .head_dim = d,
                       .scale = 0.25f, .out = a.get(), .out_stride = heads * d};
    ref_.Attention(args);
    args.out = b.get();
    fast_.Attention(args);
    EXPECT_LT(Nmse(b.values(), a.values()), 1e-12) << "block " << block;
    EXPECT_TRUE(b.GuardIntact());
  }
}

TEST_F(KernelsTest, AttentionMaskHidesLaterBlocks) {
  // One query at position 0 with block 2 sees keys 0 and 1 only: changing key 2 changes nothing.
  const int64_t d = 4;
  std::vector<float> q = {1, 0, 0, 0}, k = RandomVector(3 * d, 4), v = RandomVector(3 * d, 5);
  std::vector<const float*> kr = {&k[0], &k[4], &k[8]}, vr = {&v[0], &v[4], &v[8]};
  std::vector<int64_t> kp = {0, 1, 2}, qp = {0};
  float out1[4], out2[4];
  AttentionArgs args{.num_queries = 1, .q = q.data(), .q_stride = d, .q_positions = qp.data(),
                     .num_keys = 3, .k_rows = kr.data(), .v_rows = vr.data(),
                     .k_positions = kp.data(), .block = 2, .num_heads = 1, .num_kv_heads = 1,
                     .head_dim = d, .scale = 1.0f, .out = out1, .out_stride = d};
  fast_.Attention(args);
  for (int c = 0; c < 4; ++c) v[8 + c] = 100.0f;
  args.out = out2;
  fast_.Attention(args);
  EXPECT_EQ(0, std::memcmp(out1, out2, sizeof(out1)));
}

TEST_F(KernelsTest, FfnAndExpertsMatchReferenceIncludingAnIdleExpert) {
  const int64_t hidden = 24, width = 10, tokens = 5;
  StoredMatrix g0(DType::kBF16, width, hidden, 1), u0(DType::kBF16, width, hidden, 2),
      d0(DType::kBF16, hidden, width, 3), g1(DType::kBF16, width, hidden, 4),
      u1(DType::kBF16, width, hidden, 5), d1(DType::kBF16, hidden, width, 6);
  FfnWeights e0{g0.matrix, u0.matrix, d0.matrix}, e1{g1.matrix, u1.matrix, d1.matrix};
  std::vector<float> h = RandomVector(tokens * hidden, 7);
  Guarded a(tokens * hidden), b(tokens * hidden);
  ref_.Ffn(h.data(), tokens, e0, a.get());
  fast_.Ffn(h.data(), tokens, e0, b.get());
  EXPECT_LT(Nmse(b.values(), a.values()), 1e-10);
  EXPECT_TRUE(b.GuardIntact());

  // Expert 0 takes tokens 4, 1; expert 1 receives zero tokens; slots laid out [tokens, 2].
  std::vector<ExpertTask> tasks = {{&e0, {4, 1}, {8, 3}}, {&e1, {}, {}}};
  Guarded sa(tokens * 2 * hidden), sb(tokens * 2 * hidden);
  std::fill_n(sa.get(), tokens * 2 * hidden, 0.0f);
  std::fill_n(sb.get(), tokens * 2 * hidden, 0.0f);
  ref_.Experts(h.data(), hidden, tasks, sa.get());
  fast_.Experts(h.data(), hidden, tasks, sb.get());
  EXPECT_LT(Nmse(sb.values(), sa.values()), 1e-10);
  EXPECT_TRUE(sb.GuardIntact());
  // The expert on one token equals the dense FFN row of that token.
  EXPECT_LT(Nmse(sa.values().subspan(8 * hidden, hidden), a.values().subspan(4 * hidden, hidden)),
            1e-10);
}

TEST_F(KernelsTest, SwiGluMatchesFormula) {
  std::vector<float> g = {-2, -0.5, 0, 0.5, 3}, u = {1, 2, 3, 4, 5};
  Guarded out(5);
  fast_.SwiGlu(g.data(), u.data(), 5, out.get());
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(out.get()[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-6);
  EXPECT_TRUE(out.GuardIntact());
}

// The "flags" line of /proc/cpuinfo: what the CPU offers and the kernel enables, read
// independently of the cpuid probe in gemm.cc. Empty when there is no such file or line.
std::set<std::string> CpuInfoFlags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    return {std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
  }
  return {};
}

// GemmRowsAvx512 is compiled for avx512f/bw/vl, fma and f16c, GemmRowsAvx2 for avx2, fma and
// f16c: on a CPU with all of them the GEMM must take (and report) the widest path, on any other
// the generic one. A wrong dispatch would either leave a fast path unused or run illegal
// instructions.
TEST(GemmTest, ReportsTheIsaThisCpuSupports) {
  if (std::getenv("DMOE_KERNELS") != nullptr) GTEST_SKIP() << "DMOE_KERNELS forces the ISA";
#if defined(__x86_64__) || defined(__i386__)
  const std::vector<std::string> avx512_flags = {"avx512f", "avx512bw", "avx512vl", "fma", "f16c"};
  const std::vector<std::string> avx2_flags = {"avx2", "fma", "f16c"};
  const std::set<std::string> flags = CpuInfoFlags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  auto has_all = [&](const std::vector<std::string>& needed) {
    bool all = true;
    for (const std::string& flag : needed) all = all && flags.count(flag) > 0;
    return all;
  };
  const bool avx512 = has_all(avx512_flags), avx2 = has_all(avx2_flags);
  EXPECT_EQ(GemmIsa(), avx512 ? "avx512" : avx2 ? "avx2" : "generic")
      << "this CPU " << (avx512 ? "has" : "lacks some of") << " "
      << absl::StrJoin(avx512_flags, ", ") << " and " << (avx2 ? "has" : "lacks some of") << " "
      << absl::StrJoin(avx2_flags, ", ");
  EXPECT_EQ(CpuSupports(KernelIsa::kAvx512), avx512);
  EXPECT_EQ(CpuSupports(KernelIsa::kAvx2), avx2);
#else
  EXPECT_EQ(GemmIsa(), "generic");  // the SIMD paths exist only on x86
#endif
}

TEST(GemmTest, SetKernelIsaRejectsUnknownAndUnsupportedNames) {
  EXPECT_EQ(SetKernelIsa("sse9").code(), absl::StatusCode::kInvalidArgument);
  for (KernelIsa isa : {KernelIsa::kAvx2, KernelIsa::kAvx512}) {
    if (!CpuSupports(isa)) {
      EXPECT_EQ(SetKernelIsa(KernelIsaName(isa)).code(), absl::StatusCode::kFailedPrecondition);
    }
  }
  EXPECT_TRUE(SetKernelIsa("generic").ok());
  EXPECT_EQ(GemmIsa(), "generic");
  EXPECT_TRUE(SetKernelIsa("auto").ok());
}

// Every op of the fast backend over the shapes above (and bench-mini's 32-token GEMMs), all
// outputs concatenated.
std::vector<float> RunEveryOp(FastKernels& fast) {
  std::vector<float> all;
  auto keep = [&](const std::vector<float>& v) { all.insert(all.end(), v.begin(), v.end()); };
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 32, 33}) {
      for (int64_t k : {1, 15, 16, 17, 100, 128, 512}) {
        for (int64_t n : {1, 5, 63, 64}) {
          StoredMatrix w(dtype, n, k, static_cast<uint32_t>(m * 1000 + k * 10 + n));
          std::vector<float> x = RandomVector(m * k, 7), y(m * n);
          fast.MatMul(x.data(), m, w.matrix, y.data());
          keep(y);
        }
      }
    }
  }
  for (int64_t m : {1, 3, 32, 33}) {  // q8
    for (int64_t k : {32, 512}) {
      StoredMatrix w(DType::kI8, 63, k, static_cast<uint32_t>(m * 100 + k));
      std::vector<float> x = RandomVector(m * k, 7), y(m * 63);
      fast.MatMul(x.data(), m, w.matrix, y.data());
      keep(y);
    }
  }
  for (int64_t n : {1, 7, 64, 129, 512}) {
    std::vector<float> x = RandomVector(33 * n, 1), w = RandomVector(n, 2), y(33 * n);
    fast.RmsNorm(x.data(), 33, n, w.data(), 1e-6f, y.data());
    keep(y);
  }
  {
    QkNormRopeParams p{.num_heads = 4, .num_kv_heads = 2, .head_dim = 16, .rotary_dim = 8,
                       .eps = 1e-6f, .rope_theta = 600000.0};
    std::vector<float> qn = RandomVector(16, 5), kn = RandomVector(16, 6);
    p.q_norm = qn.data();
    p.k_norm = kn.data();
    std::vector<int64_t> pos = {0, 1, 2, 31, 32, 1000, 20000};
    std::vector<float> x = RandomVector(7 * (4 + 2 * 2) * 16, 9);
    fast.QkNormRope(x.data(), 7, pos.data(), p);
    keep(x);
  }
  for (int64_t d : {16, 17, 64}) {
    const int64_t heads = 4, kv_heads = 2, keys = 70, queries = 32;
    std::vector<float> q = RandomVector(queries * heads * d, 1);
    std::vector<float> k = RandomVector(keys * kv_heads * d, 2),
                       v = RandomVector(keys * kv_heads * d, 3);
    std::vector<const float*> k_rows, v_rows;
    std::vector<int64_t> k_pos, q_pos;
    for (int64_t j = 0; j < keys; ++j) {
      k_rows.push_back(&k[j * kv_heads * d]);
      v_rows.push_back(&v[j * kv_heads * d]);
      k_pos.push_back(j);
    }
    for (int64_t i = 0; i < queries; ++i) q_pos.push_back(38 + i);
    for (int64_t block : {1, 32}) {
      std::vector<float> out(queries * heads * d);
      fast.Attention({.num_queries = queries, .q = q.data(), .q_stride = heads * d,
                      .q_positions = q_pos.data(), .num_keys = keys, .k_rows = k_rows.data(),
                      .v_rows = v_rows.data(), .k_positions = k_pos.data(), .block = block,
                      .num_heads = heads, .num_kv_heads = kv_heads, .head_dim = d,
                      .scale = 0.25f, .out = out.data(), .out_stride = heads * d});
      keep(out);
    }
  }
  {
    const int64_t hidden = 24, width = 10, tokens = 5;
    StoredMatrix g0(DType::kBF16, width, hidden, 1), u0(DType::kBF16, width, hidden, 2),
        d0(DType::kBF16, hidden, width, 3);
    FfnWeights e0{g0.matrix, u0.matrix, d0.matrix};
    std::vector<float> h = RandomVector(tokens * hidden, 7), y(tokens * hidden);
    fast.Ffn(h.data(), tokens, e0, y.data());
    keep(y);
    std::vector<ExpertTask> tasks = {{&e0, {4, 1}, {8, 3}}, {&e0, {0, 2, 3}, {0, 5, 7}}};
    std::vector<float> slots(tokens * 2 * hidden, 0.0f);
    fast.Experts(h.data(), hidden, tasks, slots.data());
    keep(slots);
  }
  return all;
}

// The AVX2 backend has the AVX-512 backend's exact semantics: forced in turn on this machine,
// every ISA it supports gives the same bits for every op and shape.
TEST(KernelIsaTest, EverySimdIsaGivesTheSameBits) {
  std::vector<KernelIsa> isas;
  for (KernelIsa isa : {KernelIsa::kAvx512, KernelIsa::kAvx2}) {
    if (CpuSupports(isa)) isas.push_back(isa);
  }
  if (isas.size() < 2) GTEST_SKIP() << "this CPU runs fewer than two SIMD ISAs";
  FastKernels fast({.num_threads = 2});
  std::vector<std::vector<float>> results;
  for (KernelIsa isa : isas) {
    ASSERT_TRUE(SetKernelIsa(KernelIsaName(isa)).ok());
    ASSERT_EQ(GemmIsa(), KernelIsaName(isa));
    results.push_back(RunEveryOp(fast));
  }
  ASSERT_TRUE(SetKernelIsa("auto").ok());
  for (size_t i = 1; i < results.size(); ++i) {
    ASSERT_EQ(results[i].size(), results[0].size());
    size_t differing = 0, first = results[0].size();
    for (size_t j = 0; j < results[0].size(); ++j) {
      if (std::memcmp(&results[i][j], &results[0][j], sizeof(float)) != 0) {
        ++differing;
        first = std::min(first, j);
      }
    }
    EXPECT_EQ(differing, 0u) << KernelIsaName(isas[i]) << " vs " << KernelIsaName(isas[0])
                             << ": first difference at output " << first << " of "
                             << results[0].size();
  }
}

}  // namespace
}  // namespace dmoe::model
