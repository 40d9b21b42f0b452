#include "model/kv_cache.h"

#include "gtest/gtest.h"

namespace dmoe::model {
namespace {

TEST(KvCacheTest, ReservesWholePagesAndRefusesPastCapacity) {
  KvCachePool pool({.num_layers = 2, .kv_width = 4, .page_tokens = 32, .max_pages = 3});
  KvSequence a(&pool), b(&pool);
  ASSERT_TRUE(a.Reserve(33).ok());
  EXPECT_EQ(a.pages_held(), 2);
  EXPECT_EQ(pool.pages_in_use(), 2);
  absl::Status full = b.Reserve(64);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("KV cache full"), std::string::npos);
  a.Clear();
  EXPECT_EQ(pool.pages_in_use(), 0);
  EXPECT_TRUE(b.Reserve(64).ok());
}

TEST(KvCacheTest, RowsOfDifferentPositionsAndLayersDoNotAlias) {
  KvCachePool pool({.num_layers = 2, .kv_width = 4, .page_tokens = 2, .max_pages = 4});
  KvSequence s(&pool);
  ASSERT_TRUE(s.Reserve(4).ok());
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t p = 0; p < 4; ++p) {
      s.KeyRow(l, p)[0] = static_cast<float>(l * 100 + p);
      s.ValueRow(l, p)[0] = static_cast<float>(-(l * 100 + p));
    }
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t p = 0; p < 4; ++p) {
      EXPECT_EQ(s.KeyRow(l, p)[0], l * 100 + p);
      EXPECT_EQ(s.ValueRow(l, p)[0], -(l * 100 + p));
    }
}

TEST(KvCacheTest, SequenceReleasesPagesOnDestruction) {
  KvCachePool pool({.num_layers = 1, .kv_width = 2, .page_tokens = 8, .max_pages = 2});
  {
    KvSequence s(&pool);
    ASSERT_TRUE(s.Reserve(16).ok());
    EXPECT_EQ(pool.pages_in_use(), 2);
  }
  EXPECT_EQ(pool.pages_in_use(), 0);
}

}  // namespace
}  // namespace dmoe::model
