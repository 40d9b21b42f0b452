// Block-paged KV cache (ARCHITECTURE.md: page = one block of tokens). Pages are allocated
// lazily up to a fixed capacity, so admission can be bounded by KV memory.
#ifndef DMOE_MODEL_KV_CACHE_H_
#define DMOE_MODEL_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace dmoe::model {

struct KvCacheOptions {
  int64_t num_layers = 0;
  int64_t kv_width = 0;        // Nkv * head_dim
  int64_t page_tokens = 32;    // tokens per page (the diffusion block length)
  int64_t max_pages = 4096;    // capacity; allocation past it is RESOURCE_EXHAUSTED
};

// Owns the pages. Thread-safe (page allocation is guarded; page contents are written only by
// the sequence that holds the page).
class KvCachePool {
 public:
  explicit KvCachePool(const KvCacheOptions& options);

  const KvCacheOptions& options() const { return options_; }
  // Returns a free page id or RESOURCE_EXHAUSTED.
  absl::Status Allocate(int64_t count, std::vector<int32_t>* pages) ABSL_LOCKS_EXCLUDED(mu_);
  void Release(const std::vector<int32_t>& pages) ABSL_LOCKS_EXCLUDED(mu_);
  int64_t pages_in_use() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t bytes_per_page() const;

  // K or V row of `token` (0 <= token < page_tokens) in `layer` of `page`: [kv_width] floats.
  float* Row(int32_t page, int64_t layer, bool value, int64_t token);

 private:
  KvCacheOptions options_;
  mutable absl::Mutex mu_;
  // By page id; a page's buffer is allocated under mu_ on first use, then read (Row) only by
  // the holder of the page, which got it from Allocate, so not ABSL_GUARDED_BY.
  std::vector<std::unique_ptr<float[]>> storage_;
  std::vector<int32_t> free_ ABSL_GUARDED_BY(mu_);
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
};

// One sequence's cached prefix [0, length). Thread-compatible. Releases its pages on destruction.
class KvSequence {
 public:
  explicit KvSequence(KvCachePool* pool) : pool_(pool) {}
  ~KvSequence();
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  int64_t length() const { return length_; }
  // Makes room for positions [0, new_length); RESOURCE_EXHAUSTED when the pool is full.
  absl::Status Reserve(int64_t new_length);
  // Sets the cached length after rows [length, new_length) have been written.
  void Commit(int64_t new_length) { length_ = new_length; }
  float* KeyRow(int64_t layer, int64_t position);
  float* ValueRow(int64_t layer, int64_t position);
  int64_t pages_held() const { return static_cast<int64_t>(pages_.size()); }
  void Clear();

 private:
  KvCachePool* pool_;
  std::vector<int32_t> pages_;
  int64_t length_ = 0;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_KV_CACHE_H_
