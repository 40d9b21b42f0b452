// Parity of every CUDA op (model/cuda) with the naive CPU reference (model/cpu/reference_kernels,
// model::RouteTokens): NMSE per dtype, odd shapes (1 row, sizes that are not multiples of 8),
// an expert with zero rows, guard regions after (and before) every output. Skips without a GPU.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "model/cpu/reference_kernels.h"
#include "model/cuda/attention.h"
#include "model/cuda/embedding.h"
#include "model/cuda/grouped_experts.h"
#include "model/cuda/kv_cache_write.h"
#include "model/cuda/lm_head.h"
#include "model/cuda/matmul.h"
#include "model/cuda/moe_combine.h"
#include "model/cuda/moe_group.h"
#include "model/cuda/moe_router.h"
#include "model/cuda/qk_norm_rope.h"
#include "model/cuda/random_fill.h"
#include "model/cuda/rms_norm.h"
#include "model/cuda/swiglu.h"
#include "model/moe_routing.h"
#include "tests/cuda/gpu_test_util.h"

namespace dmoe::gpu {
namespace {

using gpu_testing::GuardedBuffer;
using gpu_testing::Nmse;
using gpu_testing::RandomFloats;

constexpr DType kAllDtypes[] = {DType::kF32, DType::kBF16, DType::kF16};

// Bytes of `v` stored as `dtype` (RNE), as a checkpoint would hold them.
std::vector<uint8_t> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> out(v.size() * DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&out[i * 4], &v[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

std::vector<float> Decode(const std::vector<uint8_t>& bytes, DType dtype) {
  std::vector<float> out(bytes.size() / DTypeSize(dtype));
  ConvertToF32(dtype, bytes.data(), out.data(), out.size());
  return out;
}

// `v` rounded through `dtype`.
std::vector<float> Round(const std::vector<float>& v, DType dtype) {
  return Decode(Encode(v, dtype), dtype);
}

model::WeightMatrix HostMatrix(const std::vector<uint8_t>& bytes, DType dtype, int64_t rows,
                               int64_t cols) {
  return {.dtype = dtype, .rows = rows, .cols = cols, .data = bytes.data()};
}

template <typename T>
void ToDevice(GuardedBuffer<T>& buffer, const std::vector<T>& values) {
  ASSERT_TRUE(buffer.ok());
  buffer.Upload(values);
}

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    ASSERT_EQ(cublasCreate(&cublas_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  model::ReferenceKernels ref_;
};

// --- Embedding -------------------------------------------------------------------------------

TEST_F(CudaOpsTest, EmbeddingGathersRowsExactlyInEveryDtype) {
  const int64_t vocab = 37, hidden = 67;
  const std::vector<int32_t> ids = {0, 36, 5, 5, 12};
  for (DType dtype : kAllDtypes) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    const std::vector<uint8_t> table = Encode(RandomFloats(vocab * hidden, 1, -3, 3), dtype);
    const std::vector<float> decoded = Decode(table, dtype);
    GuardedBuffer<uint8_t> d_table(table.size());
    GuardedBuffer<int32_t> d_ids(ids.size());
    GuardedBuffer<float> d_out(ids.size() * hidden);
    ToDevice(d_table, table);
    ToDevice(d_ids, ids);
    ASSERT_TRUE(d_out.ok());
    EmbeddingArgs a{.ids = d_ids.get(),
                    .num_tokens = static_cast<int64_t>(ids.size()),
                    .table = d_table.get(),
                    .table_dtype = dtype,
                    .vocab_size = vocab,
                    .hidden = hidden,
                    .out = d_out.get()};
    ASSERT_TRUE(LaunchEmbedding(a, stream_).ok());
    Sync();
    const std::vector<float> out = d_out.Download();
    for (size_t t = 0; t < ids.size(); ++t) {
      EXPECT_EQ(0, std::memcmp(&out[t * hidden], &decoded[ids[t] * hidden], hidden * 4)) << t;
    }
    EXPECT_TRUE(d_out.GuardsIntact());
  }
}

TEST_F(CudaOpsTest, EmbeddingOutOfRangeIdGivesNanRow) {
  const int64_t vocab = 8, hidden = 5;
  const std::vector<int32_t> ids = {3, 8, -1};
  GuardedBuffer<float> d_table(vocab * hidden);
  GuardedBuffer<int32_t> d_ids(ids.size());
  GuardedBuffer<float> d_out(ids.size() * hidden);
  ToDevice(d_table, RandomFloats(vocab * hidden, 2));
  ToDevice(d_ids, ids);
  EmbeddingArgs a{.ids = d_ids.get(),
                  .num_tokens = 3,
                  .table = d_table.get(),
                  .table_dtype = DType::kF32,
                  .vocab_size = vocab,
                  .hidden = hidden,
                  .out = d_out.get()};
  ASSERT_TRUE(LaunchEmbedding(a, stream_).ok());
  const std::vector<float> out = d_out.Download();
  EXPECT_FALSE(std::isnan(out[0]));
  for (int64_t i = hidden; i < 3 * hidden; ++i) EXPECT_TRUE(std::isnan(out[i])) << i;
  EXPECT_TRUE(d_out.GuardsIntact());
  a.out = nullptr;
  EXPECT_EQ(LaunchEmbedding(a, stream_).code(), absl::StatusCode::kInvalidArgument);
}

// --- RMSNorm ---------------------------------------------------------------------------------

TEST_F(CudaOpsTest, RmsNormMatchesReference) {
  struct Case {
    int64_t rows, n;
  };
  for (const Case c : {Case{1, 67}, Case{3, 2048}, Case{33, 129}}) {
    SCOPED_TRACE(testing::Message() << c.rows << "x" << c.n);
    const std::vector<float> x = RandomFloats(c.rows * c.n, 3, -2, 2);
    const std::vector<float> w = RandomFloats(c.n, 4, 0.5f, 1.5f);
    std::vector<float> expected(x.size());
    ref_.RmsNorm(x.data(), c.rows, c.n, w.data(), 1e-6f, expected.data());

    GuardedBuffer<float> d_x(x.size()), d_w(w.size()), d_y(x.size());
    GuardedBuffer<uint16_t> d_y16(x.size());
    ToDevice(d_x, x);
    ToDevice(d_w, w);
    RmsNormArgs a{.x = d_x.get(),
                  .rows = c.rows,
                  .n = c.n,
                  .weight = d_w.get(),
                  .eps = 1e-6f,
                  .y = d_y.get(),
                  .y_dtype = DType::kF32};
    ASSERT_TRUE(LaunchRmsNorm(a, stream_).ok());
    EXPECT_LE(Nmse(d_y.Download(), expected), 1e-12);
    EXPECT_TRUE(d_y.GuardsIntact());

    a.y = d_y16.get();
    a.y_dtype = DType::kBF16;
    ASSERT_TRUE(LaunchRmsNorm(a, stream_).ok());
    std::vector<uint16_t> y16 = d_y16.Download();
    std::vector<float> y16f(y16.size());
    ConvertToF32(DType::kBF16, y16.data(), y16f.data(), y16.size());
    EXPECT_LE(Nmse(y16f, expected), 1e-5);
    EXPECT_TRUE(d_y16.GuardsIntact());

    a.y = d_x.get();  // in place
    a.y_dtype = DType::kF32;
    ASSERT_TRUE(LaunchRmsNorm(a, stream_).ok());
    EXPECT_LE(Nmse(d_x.Download(), expected), 1e-12);
    EXPECT_TRUE(d_x.GuardsIntact());
  }
}

// --- MatMul (cuBLAS) -------------------------------------------------------------------------

TEST_F(CudaOpsTest, MatMulMatchesReferencePerDtype) {
  struct Case {
    int64_t m, k, n;
  };
  for (const Case c : {Case{1, 64, 45}, Case{7, 67, 33}, Case{33, 256, 129}}) {
    for (DType dtype : kAllDtypes) {
      SCOPED_TRACE(testing::Message()
                   << c.m << "x" << c.k << "x" << c.n << " " << DTypeName(dtype));
      const std::vector<float> x = RandomFloats(c.m * c.k, 5);
      const std::vector<float> y0 = RandomFloats(c.m * c.n, 6);
      const std::vector<uint8_t> w = Encode(RandomFloats(c.n * c.k, 7), dtype);
      const model::WeightMatrix hw = HostMatrix(w, dtype, c.n, c.k);
      // The reference with F32 activations (what the CPU backends compute) and with the
      // activations rounded to the weight dtype (what cuBLAS is given).
      std::vector<float> exact(c.m * c.n), rounded(c.m * c.n);
      ref_.MatMul(x.data(), c.m, hw, exact.data());
      const std::vector<float> xr = Round(x, dtype);
      ref_.MatMul(xr.data(), c.m, hw, rounded.data());

      GuardedBuffer<float> d_x(x.size()), d_y(c.m * c.n);
      GuardedBuffer<uint8_t> d_w(w.size()), d_scratch(x.size() * 2);
      ToDevice(d_x, x);
      ToDevice(d_w, w);
      MatMulArgs a{.cublas = cublas_,
                   .x = d_x.get(),
                   .x_dtype = DType::kF32,
                   .m = c.m,
                   .k = c.k,
                   .w = d_w.get(),
                   .w_dtype = dtype,
                   .n = c.n,
                   .y = d_y.get(),
                   .accumulate = false,
                   .x_scratch = d_scratch.get()};
      ASSERT_TRUE(LaunchMatMul(a, stream_).ok());
      const std::vector<float> y = d_y.Download();
      EXPECT_LE(Nmse(y, rounded), 1e-10);
      EXPECT_LE(Nmse(y, exact), dtype == DType::kF32 ? 1e-10 : dtype == DType::kF16 ? 1e-5 : 1e-4);
      EXPECT_TRUE(d_y.GuardsIntact());
      EXPECT_TRUE(d_scratch.GuardsIntact());

      // y += x W^T.
      ToDevice(d_y, y0);
      a.accumulate = true;
      ASSERT_TRUE(LaunchMatMul(a, stream_).ok());
      std::vector<float> acc = rounded;
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += y0[i];
      EXPECT_LE(Nmse(d_y.Download(), acc), 1e-10);
      EXPECT_TRUE(d_y.GuardsIntact());
    }
  }
}

TEST_F(CudaOpsTest, MatMulRejectsMissingScratchAndSkipsEmpty) {
  GuardedBuffer<float> d_x(16), d_y(16);
  GuardedBuffer<uint16_t> d_w(16);
  MatMulArgs a{.cublas = cublas_,
               .x = d_x.get(),
               .x_dtype = DType::kF32,
               .m = 4,
               .k = 4,
               .w = d_w.get(),
               .w_dtype = DType::kBF16,
               .n = 4,
               .y = d_y.get()};
  EXPECT_EQ(LaunchMatMul(a, stream_).code(), absl::StatusCode::kInvalidArgument);
  a.m = 0;
  EXPECT_TRUE(LaunchMatMul(a, stream_).ok());
}

// --- QK-norm + RoPE --------------------------------------------------------------------------

TEST_F(CudaOpsTest, QkNormRopeMatchesReference) {
  struct Case {
    int64_t nq, nkv, d, r;
    bool norm;
  };
  for (const Case c : {Case{4, 2, 16, 8, true}, Case{16, 4, 128, 64, true},
                       Case{3, 1, 100, 50, false}, Case{2, 2, 64, 64, true}}) {
    for (int64_t m : {1, 5}) {
      SCOPED_TRACE(testing::Message() << "Nq " << c.nq << " Nkv " << c.nkv << " D " << c.d << " R "
                                      << c.r << " m " << m);
      const int64_t width = (c.nq + 2 * c.nkv) * c.d, stride = width + 3;
      std::vector<float> qkv = RandomFloats(m * stride, 8, -2, 2);
      std::vector<int64_t> pos64(m);
      std::vector<int32_t> pos32(m);
      for (int64_t i = 0; i < m; ++i)
        pos32[i] = static_cast<int32_t>(pos64[i] = (i * 7919 + 3) % 32000);
      const std::vector<float> qn = RandomFloats(c.d, 9, 0.5f, 1.5f),
                               kn = RandomFloats(c.d, 10, 0.5f, 1.5f);
      const std::vector<float> inv = model::RopeInverseFrequencies(c.r, 600000.0);

      std::vector<float> packed(m * width);
      for (int64_t i = 0; i < m; ++i) std::copy_n(&qkv[i * stride], width, &packed[i * width]);
      model::QkNormRopeParams p{.num_heads = c.nq,
                                .num_kv_heads = c.nkv,
                                .head_dim = c.d,
                                .rotary_dim = c.r,
                                .eps = 1e-6f,
                                .rope_theta = 600000.0,
                                .q_norm = c.norm ? qn.data() : nullptr,
                                .k_norm = c.norm ? kn.data() : nullptr};
      ref_.QkNormRope(packed.data(), m, pos64.data(), p);
      std::vector<float> expected = qkv;
      for (int64_t i = 0; i < m; ++i) std::copy_n(&packed[i * width], width, &expected[i * stride]);

      GuardedBuffer<float> d_qkv(qkv.size()), d_qn(c.d), d_kn(c.d),
          d_inv(std::max<size_t>(inv.size(), 1));
      GuardedBuffer<int32_t> d_pos(m);
      ToDevice(d_qkv, qkv);
      ToDevice(d_qn, qn);
      ToDevice(d_kn, kn);
      ToDevice(d_inv, inv);
      ToDevice(d_pos, pos32);
      QkNormRopeArgs a{.qkv = d_qkv.get(),
                       .m = m,
                       .row_stride = stride,
                       .positions = d_pos.get(),
                       .num_heads = c.nq,
                       .num_kv_heads = c.nkv,
                       .head_dim = c.d,
                       .rotary_dim = c.r,
                       .q_norm = c.norm ? d_qn.get() : nullptr,
                       .k_norm = c.norm ? d_kn.get() : nullptr,
                       .eps = 1e-6f,
                       .inv_freq = d_inv.get()};
      ASSERT_TRUE(LaunchQkNormRope(a, stream_).ok());
      const std::vector<float> out = d_qkv.Download();
      EXPECT_LE(Nmse(out, expected), 1e-10);
      // V heads and the row padding are not touched at all.
      for (int64_t i = 0; i < m; ++i) {
        const int64_t v0 = i * stride + (c.nq + c.nkv) * c.d;
        EXPECT_EQ(0, std::memcmp(&out[v0], &qkv[v0], (c.nkv * c.d + 3) * 4)) << "row " << i;
      }
      EXPECT_TRUE(d_qkv.GuardsIntact());
    }
  }
}

// --- Attention over the paged KV cache -------------------------------------------------------

struct AttentionSegment {
  int64_t start;  // cached prefix
  int64_t n;      // rows
  int64_t block;
};

void CheckAttention(cudaStream_t stream, int64_t nq, int64_t nkv, int64_t d,
                    const std::vector<AttentionSegment>& segments) {
  SCOPED_TRACE(testing::Message() << "Nq " << nq << " Nkv " << nkv << " D " << d);
  const int64_t page_tokens = 8, num_layers = 2, layer = 1;
  const int64_t kv_width = nkv * d, q_width = nq * d, stride = (nq + 2 * nkv) * d;
  const KvPoolLayout layout{
      .num_layers = num_layers, .kv_width = kv_width, .page_tokens = page_tokens};
  int64_t rows = 0, pages_needed = 0, max_n = 0, max_pages = 1;
  for (const AttentionSegment& s : segments) {
    rows += s.n;
    max_n = std::max(max_n, s.n);
    const int64_t p = (s.start + page_tokens - 1) / page_tokens;
    pages_needed += p;
    max_pages = std::max(max_pages, p);
  }
  const int64_t num_pages = pages_needed + 3;
  const std::vector<float> qkv = RandomFloats(rows * stride, 11, -1.5f, 1.5f);
  const std::vector<float> pool = RandomFloats(num_pages * layout.page_floats(), 12, -1.5f, 1.5f);
  // Pages handed out in a scrambled order.
  std::vector<int32_t> order(num_pages);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = 0; i < num_pages; ++i) std::swap(order[i], order[(i * 13 + 5) % num_pages]);
  std::vector<int32_t> table(segments.size() * max_pages, 0), row_begin(segments.size() + 1, 0),
      starts, blocks;
  int64_t next_page = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const int64_t p = (segments[i].start + page_tokens - 1) / page_tokens;
    for (int64_t j = 0; j < p; ++j) table[i * max_pages + j] = order[next_page++];
    row_begin[i + 1] = row_begin[i] + static_cast<int32_t>(segments[i].n);
    starts.push_back(static_cast<int32_t>(segments[i].start));
    blocks.push_back(static_cast<int32_t>(segments[i].block));
  }

  // Reference: per segment, keys = cached prefix from the pages, then the segment's rows.
  std::vector<float> expected(rows * q_width, 0.0f);
  model::ReferenceKernels ref;
  for (size_t i = 0; i < segments.size(); ++i) {
    const AttentionSegment& s = segments[i];
    std::vector<const float*> k_rows, v_rows;
    std::vector<int64_t> k_pos, q_pos;
    for (int64_t p = 0; p < s.start; ++p) {
      const int32_t page = table[i * max_pages + p / page_tokens];
      const float* base = &pool[page * layout.page_floats() + layer * 2 * page_tokens * kv_width +
                                (p % page_tokens) * kv_width];
      k_rows.push_back(base);
      v_rows.push_back(base + page_tokens * kv_width);
      k_pos.push_back(p);
    }
    for (int64_t j = 0; j < s.n; ++j) {
      const float* row = &qkv[(row_begin[i] + j) * stride];
      k_rows.push_back(row + q_width);
      v_rows.push_back(row + q_width + kv_width);
      k_pos.push_back(s.start + j);
      q_pos.push_back(s.start + j);
    }
    ref.Attention({.num_queries = s.n,
                   .q = &qkv[row_begin[i] * stride],
                   .q_stride = stride,
                   .q_positions = q_pos.data(),
                   .num_keys = static_cast<int64_t>(k_rows.size()),
                   .k_rows = k_rows.data(),
                   .v_rows = v_rows.data(),
                   .k_positions = k_pos.data(),
                   .block = s.block,
                   .num_heads = nq,
                   .num_kv_heads = nkv,
                   .head_dim = d,
                   .scale = 1.0f / std::sqrt(static_cast<float>(d)),
                   .out = &expected[row_begin[i] * q_width],
                   .out_stride = q_width});
  }

  GuardedBuffer<float> d_qkv(qkv.size()), d_pool(pool.size()), d_out(rows * q_width);
  GuardedBuffer<int32_t> d_table(table.size()), d_rows(row_begin.size()), d_start(starts.size()),
      d_block(blocks.size());
  ToDevice(d_qkv, qkv);
  ToDevice(d_pool, pool);
  ToDevice(d_table, table);
  ToDevice(d_rows, row_begin);
  ToDevice(d_start, starts);
  ToDevice(d_block, blocks);
  AttentionArgs a{.qkv = d_qkv.get(),
                  .qkv_stride = stride,
                  .out = d_out.get(),
                  .out_stride = q_width,
                  .num_segments = static_cast<int32_t>(segments.size()),
                  .seg_row_begin = d_rows.get(),
                  .seg_start = d_start.get(),
                  .seg_block = d_block.get(),
                  .page_table = d_table.get(),
                  .max_pages_per_segment = static_cast<int32_t>(max_pages),
                  .kv_pool = d_pool.get(),
                  .kv = layout,
                  .layer = layer,
                  .max_segment_rows = static_cast<int32_t>(max_n),
                  .num_heads = static_cast<int32_t>(nq),
                  .num_kv_heads = static_cast<int32_t>(nkv),
                  .head_dim = static_cast<int32_t>(d),
                  .scale = 1.0f / std::sqrt(static_cast<float>(d))};
  ASSERT_TRUE(LaunchAttention(a, stream).ok());
  EXPECT_LE(Nmse(d_out.Download(), expected), 1e-10);
  EXPECT_TRUE(d_out.GuardsIntact());
}

TEST_F(CudaOpsTest, AttentionOverPagedPrefixMatchesReference) {
  // One row, no prefix; partial pages; a long prefix (several key tiles); causal (block 1);
  // block boundaries inside the segment.
  const std::vector<AttentionSegment> segments = {{0, 1, 1},   {5, 7, 4},   {40, 32, 32},
                                                  {17, 33, 8}, {64, 1, 32}, {3, 9, 1}};
  CheckAttention(stream_, 4, 2, 16, segments);
  CheckAttention(stream_, 16, 4, 128, segments);
  CheckAttention(stream_, 3, 1, 20, segments);
  CheckAttention(stream_, 8, 8, 64, segments);
}

TEST_F(CudaOpsTest, AttentionRejectsUnsupportedShapes) {
  AttentionArgs a;
  a.num_segments = 1;
  a.max_segment_rows = 1;
  float dummy = 0;
  int32_t idummy = 0;
  a.qkv = &dummy;
  a.out = &dummy;
  a.seg_row_begin = a.seg_start = a.seg_block = &idummy;
  a.num_heads = 4;
  a.num_kv_heads = 2;
  a.head_dim = 256;  // above 128
  EXPECT_EQ(LaunchAttention(a, stream_).code(), absl::StatusCode::kInvalidArgument);
}

// --- KV cache write --------------------------------------------------------------------------

TEST_F(CudaOpsTest, KvCacheWriteStoresRowsAtTheirPages) {
  const KvPoolLayout layout{.num_layers = 3, .kv_width = 12, .page_tokens = 4};
  const int64_t pages = 5, stride = 3 * 12 + 1, q_width = 12;
  const std::vector<float> qkv = RandomFloats(6 * stride, 13);
  std::vector<float> pool(pages * layout.page_floats(), 0.5f);
  const std::vector<int32_t> rows = {0, 2, 5}, page = {4, 0, 4}, slot = {3, 0, 1};
  GuardedBuffer<float> d_qkv(qkv.size()), d_pool(pool.size());
  GuardedBuffer<int32_t> d_rows(3), d_pages(3), d_slots(3);
  ToDevice(d_qkv, qkv);
  ToDevice(d_pool, pool);
  ToDevice(d_rows, rows);
  ToDevice(d_pages, page);
  ToDevice(d_slots, slot);
  KvCacheWriteArgs a{.qkv = d_qkv.get(),
                     .qkv_stride = stride,
                     .k_offset = q_width,
                     .v_offset = q_width + 12,
                     .kv_pool = d_pool.get(),
                     .kv = layout,
                     .layer = 2,
                     .num_rows = 3,
                     .rows = d_rows.get(),
                     .pages = d_pages.get(),
                     .slots = d_slots.get()};
  ASSERT_TRUE(LaunchKvCacheWrite(a, stream_).ok());
  for (int i = 0; i < 3; ++i) {
    float* k = &pool[page[i] * layout.page_floats() + 2 * 2 * 4 * 12 + slot[i] * 12];
    std::copy_n(&qkv[rows[i] * stride + q_width], 12, k);
    std::copy_n(&qkv[rows[i] * stride + q_width + 12], 12, k + 4 * 12);
  }
  EXPECT_EQ(d_pool.Download(), pool);
  EXPECT_TRUE(d_pool.GuardsIntact());
}

// --- Router ----------------------------------------------------------------------------------

TEST_F(CudaOpsTest, MoeRouterMatchesRouteTokens) {
  struct Case {
    int32_t e, k, groups, topk_groups;
    bool norm, bias;
  };
  for (const Case c : {Case{256, 8, 8, 4, true, true}, Case{16, 4, 4, 2, true, false},
                       Case{64, 6, 1, 1, false, true}, Case{10, 1, 1, 1, true, true}}) {
    for (int64_t tokens : {1, 37}) {
      SCOPED_TRACE(testing::Message() << "E " << c.e << " k " << c.k << " groups " << c.groups
                                      << " tokens " << tokens);
      const std::vector<float> logits = RandomFloats(tokens * c.e, 14, -4, 4);
      const std::vector<float> bias = RandomFloats(c.e, 15, -0.1f, 0.1f);
      const model::RoutingParams p{.num_experts = c.e,
                                   .top_k = c.k,
                                   .n_group = c.groups,
                                   .topk_group = c.topk_groups,
                                   .norm_topk_prob = c.norm,
                                   .routed_scaling_factor = 2.5f};
      const model::Routing expected =
          model::RouteTokens(logits.data(), tokens, c.bias ? bias.data() : nullptr, p);
      GuardedBuffer<float> d_logits(logits.size()), d_bias(bias.size()), d_w(tokens * c.k);
      GuardedBuffer<int32_t> d_ids(tokens * c.k);
      ToDevice(d_logits, logits);
      ToDevice(d_bias, bias);
      MoeRouterArgs a{.logits = d_logits.get(),
                      .num_tokens = tokens,
                      .bias = c.bias ? d_bias.get() : nullptr,
                      .num_experts = c.e,
                      .top_k = c.k,
                      .n_group = c.groups,
                      .topk_group = c.topk_groups,
                      .norm_topk_prob = c.norm,
                      .routed_scaling_factor = 2.5f,
                      .experts = d_ids.get(),
                      .weights = d_w.get()};
      ASSERT_TRUE(LaunchMoeRouter(a, stream_).ok());
      EXPECT_EQ(d_ids.Download(), expected.experts);
      EXPECT_LE(Nmse(d_w.Download(), expected.weights), 1e-12);
      EXPECT_TRUE(d_ids.GuardsIntact());
      EXPECT_TRUE(d_w.GuardsIntact());
    }
  }
}

TEST_F(CudaOpsTest, MoeRouterBreaksTiesTowardsLowerIds) {
  const int32_t e = 12, k = 3;
  const std::vector<float> logits(e, 0.25f);  // every score equal
  const model::RoutingParams p{.num_experts = e, .top_k = k, .n_group = 3, .topk_group = 2};
  const model::Routing expected = model::RouteTokens(logits.data(), 1, nullptr, p);
  GuardedBuffer<float> d_logits(e), d_w(k);
  GuardedBuffer<int32_t> d_ids(k);
  ToDevice(d_logits, logits);
  MoeRouterArgs a{.logits = d_logits.get(),
                  .num_tokens = 1,
                  .num_experts = e,
                  .top_k = k,
                  .n_group = 3,
                  .topk_group = 2,
                  .experts = d_ids.get(),
                  .weights = d_w.get()};
  ASSERT_TRUE(LaunchMoeRouter(a, stream_).ok());
  EXPECT_EQ(d_ids.Download(), expected.experts);
  EXPECT_EQ(expected.experts, (std::vector<int32_t>{0, 1, 2}));
}

// --- Grouping by expert ----------------------------------------------------------------------

TEST_F(CudaOpsTest, MoeGroupIsAStableCountingSort) {
  const int32_t e = 10;
  std::vector<int32_t> experts(1000);
  for (size_t i = 0; i < experts.size(); ++i) {
    int32_t id = static_cast<int32_t>((i * 7 + i / 3) % e);
    if (id == 3) id = 4;       // expert 3 gets no slot
    if (i % 97 == 0) id = -1;  // ignored
    if (i % 89 == 0) id = e;   // ignored
    experts[i] = id;
  }
  std::vector<int32_t> counts(e, 0), offsets(e + 1, 0), sorted;
  for (int32_t x : experts) {
    if (x >= 0 && x < e) ++counts[x];
  }
  for (int32_t i = 0; i < e; ++i) offsets[i + 1] = offsets[i] + counts[i];
  for (int32_t x = 0; x < e; ++x) {
    for (size_t s = 0; s < experts.size(); ++s) {
      if (experts[s] == x) sorted.push_back(static_cast<int32_t>(s));
    }
  }
  GuardedBuffer<int32_t> d_experts(experts.size()), d_counts(e), d_offsets(e + 1),
      d_sorted(experts.size());
  ToDevice(d_experts, experts);
  MoeGroupArgs a{.experts = d_experts.get(),
                 .num_slots = static_cast<int64_t>(experts.size()),
                 .num_experts = e,
                 .counts = d_counts.get(),
                 .offsets = d_offsets.get(),
                 .sorted_slots = d_sorted.get()};
  ASSERT_TRUE(LaunchMoeGroup(a, stream_).ok());
  EXPECT_EQ(d_counts.Download(), counts);
  EXPECT_EQ(d_offsets.Download(), offsets);
  std::vector<int32_t> got = d_sorted.Download();
  got.resize(sorted.size());
  EXPECT_EQ(got, sorted);
  EXPECT_TRUE(d_sorted.GuardsIntact());

  a.num_slots = 0;  // no rows at all: zero counts and offsets
  ASSERT_TRUE(LaunchMoeGroup(a, stream_).ok());
  EXPECT_EQ(d_counts.Download(), std::vector<int32_t>(e, 0));
  EXPECT_EQ(d_offsets.Download(), std::vector<int32_t>(e + 1, 0));
}

// --- Grouped expert GEMMs --------------------------------------------------------------------

void CheckGroupedExperts(cudaStream_t stream, DType dtype, int64_t h, int64_t width) {
  SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " H " << h << " I " << width);
  const int32_t e_count = 6, top_k = 3;
  const int64_t tokens = 13, slots = tokens * top_k;
  // Expert 0 gets more than 8 rows (several passes), 3 gets none, 5 has no weights and no
  // rows, the last slot is routed nowhere (its output row must stay untouched).
  std::vector<int32_t> ids(slots);
  for (int64_t s = 0; s < slots; ++s) {
    static const int32_t kCycle[] = {0, 1, 0, 2, 4, 0};
    ids[s] = kCycle[s % 6];
  }
  ids[slots - 1] = -1;
  const std::vector<float> hidden = RandomFloats(tokens * h, 16, -2, 2);
  std::vector<std::vector<uint8_t>> mats(3 * e_count);
  std::vector<model::FfnWeights> host(e_count);
  for (int32_t e = 0; e < 5; ++e) {
    mats[3 * e] = Encode(RandomFloats(width * h, 100 + e, -0.3f, 0.3f), dtype);
    mats[3 * e + 1] = Encode(RandomFloats(width * h, 200 + e, -0.3f, 0.3f), dtype);
    mats[3 * e + 2] = Encode(RandomFloats(h * width, 300 + e, -0.3f, 0.3f), dtype);
    host[e] = {HostMatrix(mats[3 * e], dtype, width, h),
               HostMatrix(mats[3 * e + 1], dtype, width, h),
               HostMatrix(mats[3 * e + 2], dtype, h, width)};
  }
  model::ReferenceKernels ref;
  std::vector<float> expected(slots * h, 0.0f);
  for (int64_t s = 0; s < slots; ++s) {
    if (ids[s] < 0) continue;
    ref.Ffn(&hidden[(s / top_k) * h], 1, host[ids[s]], &expected[s * h]);
  }

  // Device copies of the experts and the pointer tables (null for expert 5).
  std::vector<std::unique_ptr<GuardedBuffer<uint8_t>>> d_mats;
  std::vector<const void*> gate(e_count, nullptr), up(e_count, nullptr), down(e_count, nullptr);
  for (int32_t e = 0; e < 5; ++e) {
    for (int i = 0; i < 3; ++i) {
      d_mats.push_back(std::make_unique<GuardedBuffer<uint8_t>>(mats[3 * e + i].size()));
      ToDevice(*d_mats.back(), mats[3 * e + i]);
      (i == 0 ? gate : i == 1 ? up : down)[e] = d_mats.back()->get();
    }
  }
  GuardedBuffer<const void*> d_gate(e_count), d_up(e_count), d_down(e_count);
  ToDevice(d_gate, gate);
  ToDevice(d_up, up);
  ToDevice(d_down, down);
  GuardedBuffer<int32_t> d_ids(slots), d_counts(e_count), d_offsets(e_count + 1), d_sorted(slots);
  GuardedBuffer<float> d_hidden(hidden.size()), d_act(slots * width), d_out(slots * h);
  ToDevice(d_ids, ids);
  ToDevice(d_hidden, hidden);
  MoeGroupArgs g{.experts = d_ids.get(),
                 .num_slots = slots,
                 .num_experts = e_count,
                 .counts = d_counts.get(),
                 .offsets = d_offsets.get(),
                 .sorted_slots = d_sorted.get()};
  ASSERT_TRUE(LaunchMoeGroup(g, stream).ok());
  GroupedExpertsArgs a{.hidden = d_hidden.get(),
                       .hidden_size = h,
                       .intermediate_size = width,
                       .top_k = top_k,
                       .num_slots = slots,
                       .num_experts = e_count,
                       .offsets = d_offsets.get(),
                       .sorted_slots = d_sorted.get(),
                       .gate = d_gate.get(),
                       .up = d_up.get(),
                       .down = d_down.get(),
                       .weight_dtype = dtype,
                       .act = d_act.get(),
                       .slot_out = d_out.get()};
  ASSERT_TRUE(LaunchGroupedExperts(a, stream).ok());
  std::vector<float> out = d_out.Download();
  for (int64_t j = 0; j < h; ++j) {
    EXPECT_TRUE(GuardedBuffer<float>::Untouched(out[(slots - 1) * h + j])) << j;
  }
  std::fill(out.begin() + (slots - 1) * h, out.end(), 0.0f);
  // Same weights, F32 activations on both sides: only the summation order differs.
  EXPECT_LE(Nmse(out, expected), 1e-10);
  EXPECT_TRUE(d_out.GuardsIntact());
  EXPECT_TRUE(d_act.GuardsIntact());

  // Rows routed to an expert whose weights are not held come out as NaN.
  ids[0] = 5;
  ToDevice(d_ids, ids);
  ASSERT_TRUE(LaunchMoeGroup(g, stream).ok());
  ASSERT_TRUE(LaunchGroupedExperts(a, stream).ok());
  out = d_out.Download();
  EXPECT_TRUE(std::isnan(out[0]));
}

TEST_F(CudaOpsTest, GroupedExpertsMatchReferenceIncludingAnIdleExpert) {
  for (DType dtype : kAllDtypes) {
    CheckGroupedExperts(stream_, dtype, 64, 40);    // 16-byte vector loads
    CheckGroupedExperts(stream_, dtype, 67, 45);    // odd sizes: scalar path
    CheckGroupedExperts(stream_, dtype, 1024, 96);  // several K tiles
  }
}

// --- Combine and SwiGLU ----------------------------------------------------------------------

TEST_F(CudaOpsTest, MoeCombineFollowsTheForwardLoop) {
  const int64_t t = 5, h = 67;
  const int32_t k = 3;
  const std::vector<float> x = RandomFloats(t * h, 17), slot = RandomFloats(t * k * h, 18),
                           w = RandomFloats(t * k, 19, 0, 1), shared = RandomFloats(t * h, 20);
  for (bool with_shared : {true, false}) {
    std::vector<float> expected = x;
    for (int64_t i = 0; i < t; ++i) {
      for (int64_t j = 0; j < h; ++j) {
        float moe = 0.0f;
        for (int s = 0; s < k; ++s) moe += w[i * k + s] * slot[(i * k + s) * h + j];
        expected[i * h + j] += moe + (with_shared ? shared[i * h + j] : 0.0f);
      }
    }
    GuardedBuffer<float> d_x(x.size()), d_slot(slot.size()), d_w(w.size()), d_shared(shared.size());
    ToDevice(d_x, x);
    ToDevice(d_slot, slot);
    ToDevice(d_w, w);
    ToDevice(d_shared, shared);
    MoeCombineArgs a{.x = d_x.get(),
                     .slot_out = d_slot.get(),
                     .weights = d_w.get(),
                     .shared = with_shared ? d_shared.get() : nullptr,
                     .num_tokens = t,
                     .hidden = h,
                     .top_k = k};
    ASSERT_TRUE(LaunchMoeCombine(a, stream_).ok());
    EXPECT_LE(Nmse(d_x.Download(), expected), 1e-12);
    EXPECT_TRUE(d_x.GuardsIntact());
  }
}

TEST_F(CudaOpsTest, SwiGluMatchesReference) {
  const int64_t n = 1001;
  const std::vector<float> g = RandomFloats(n, 21, -6, 6), u = RandomFloats(n, 22, -2, 2);
  std::vector<float> expected(n);
  ref_.SwiGlu(g.data(), u.data(), n, expected.data());
  GuardedBuffer<float> d_g(n), d_u(n), d_out(n);
  GuardedBuffer<uint16_t> d_out16(n);
  ToDevice(d_g, g);
  ToDevice(d_u, u);
  SwiGluArgs a{
      .gate = d_g.get(), .up = d_u.get(), .count = n, .out = d_out.get(), .out_dtype = DType::kF32};
  ASSERT_TRUE(LaunchSwiGlu(a, stream_).ok());
  EXPECT_LE(Nmse(d_out.Download(), expected), 1e-12);
  a.out = d_out16.get();
  a.out_dtype = DType::kBF16;
  ASSERT_TRUE(LaunchSwiGlu(a, stream_).ok());
  const std::vector<uint16_t> o16 = d_out16.Download();
  std::vector<float> o16f(n);
  ConvertToF32(DType::kBF16, o16.data(), o16f.data(), n);
  EXPECT_LE(Nmse(o16f, expected), 1e-5);
  a.out = d_g.get();  // in place
  a.out_dtype = DType::kF32;
  ASSERT_TRUE(LaunchSwiGlu(a, stream_).ok());
  EXPECT_LE(Nmse(d_g.Download(), expected), 1e-12);
  EXPECT_TRUE(d_out.GuardsIntact());
  EXPECT_TRUE(d_out16.GuardsIntact());
  EXPECT_TRUE(d_g.GuardsIntact());
}

// --- lm_head + top-1 -------------------------------------------------------------------------

TEST_F(CudaOpsTest, LmHeadTop1MatchesGreedySoftmax) {
  const int64_t m = 70, h = 64, vocab = 1001, chunk = 32;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    const std::vector<float> x = RandomFloats(m * h, 23, -2, 2);
    const std::vector<uint8_t> w = Encode(RandomFloats(vocab * h, 24, -0.5f, 0.5f), dtype);
    std::vector<float> logits(m * vocab);
    const std::vector<float> xr = Round(x, dtype);  // what cuBLAS multiplies
    ref_.MatMul(xr.data(), m, HostMatrix(w, dtype, vocab, h), logits.data());

    GuardedBuffer<float> d_x(x.size()), d_logits(chunk * vocab), d_conf(m);
    GuardedBuffer<uint8_t> d_w(w.size()), d_scratch(chunk * h * 2);
    GuardedBuffer<int32_t> d_ids(m);
    ToDevice(d_x, x);
    ToDevice(d_w, w);
    LmHeadTop1Args a{.cublas = cublas_,
                     .x = d_x.get(),
                     .m = m,
                     .hidden = h,
                     .w = d_w.get(),
                     .w_dtype = dtype,
                     .vocab = vocab,
                     .logits_scratch = d_logits.get(),
                     .scratch_rows = chunk,
                     .x_scratch = d_scratch.get(),
                     .ids = d_ids.get(),
                     .confidence = d_conf.get()};
    ASSERT_TRUE(LaunchLmHeadTop1(a, stream_).ok());
    const std::vector<int32_t> ids = d_ids.Download();
    const std::vector<float> conf = d_conf.Download();
    for (int64_t r = 0; r < m; ++r) {
      const float* row = &logits[r * vocab];
      const int32_t best = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - row[best]));
      // Equal ids, unless the two candidates are within rounding of each other.
      if (ids[r] != best) {
        ASSERT_GE(ids[r], 0);
        EXPECT_LT(std::fabs(row[ids[r]] - row[best]), 1e-4f) << "row " << r;
      }
      EXPECT_NEAR(conf[r], 1.0 / sum, 1e-4 / sum) << "row " << r;
    }
    EXPECT_TRUE(d_ids.GuardsIntact());
    EXPECT_TRUE(d_conf.GuardsIntact());
    EXPECT_TRUE(d_logits.GuardsIntact());
    EXPECT_TRUE(d_scratch.GuardsIntact());
  }
}

TEST_F(CudaOpsTest, SoftmaxTop1TakesTheLowestIdAmongEqualMaxima) {
  const std::vector<float> logits = {1, 3, 3, 0, -INFINITY, 3};
  GuardedBuffer<float> d_logits(logits.size()), d_conf(1);
  GuardedBuffer<int32_t> d_ids(1);
  ToDevice(d_logits, logits);
  ASSERT_TRUE(LaunchSoftmaxTop1(d_logits.get(), 1, 6, d_ids.get(), d_conf.get(), stream_).ok());
  EXPECT_EQ(d_ids.Download()[0], 1);
  const double sum = std::exp(-2.0) + 3 + std::exp(-3.0);
  EXPECT_NEAR(d_conf.Download()[0], 1.0 / sum, 1e-6);
}

// --- Random fill -----------------------------------------------------------------------------

TEST_F(CudaOpsTest, RandomFillIsDeterministicWithTheRequestedMoments) {
  const int64_t n = 100001;
  GuardedBuffer<float> a(n), b(n), c(n);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  RandomFillArgs args{
      .data = a.get(), .dtype = DType::kF32, .count = n, .seed = 5, .mean = 0.5f, .std = 2.0f};
  ASSERT_TRUE(LaunchRandomFill(args, stream_).ok());
  args.data = b.get();
  ASSERT_TRUE(LaunchRandomFill(args, stream_).ok());
  args.data = c.get();
  args.seed = 6;
  ASSERT_TRUE(LaunchRandomFill(args, stream_).ok());
  const std::vector<float> va = a.Download(), vb = b.Download(), vc = c.Download();
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  double mean = 0, var = 0;
  for (float v : va) mean += v;
  mean /= n;
  for (float v : va) var += (v - mean) * (v - mean);
  var /= n;
  EXPECT_NEAR(mean, 0.5, 0.05);
  EXPECT_NEAR(std::sqrt(var), 2.0, 0.04);
  EXPECT_TRUE(a.GuardsIntact());
}

}  // namespace
}  // namespace dmoe::gpu
