#include "model/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace dmoe::model {

KvCachePool::KvCachePool(const KvCacheOptions& options) : options_(options) {
  storage_.resize(options.max_pages);
  free_.reserve(options.max_pages);
  for (int64_t i = options.max_pages - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
}

int64_t KvCachePool::bytes_per_page() const {
  return options_.num_layers * 2 * options_.page_tokens * options_.kv_width * sizeof(float);
}

absl::Status KvCachePool::Allocate(int64_t count, std::vector<int32_t>* pages) {
  absl::MutexLock lock(&mu_);
  if (count > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: need ", count, " more page(s), ", free_.size(), " of ",
        options_.max_pages, " free"));
  }
  for (int64_t i = 0; i < count; ++i) {
    int32_t page = free_.back();
    free_.pop_back();
    if (!storage_[page]) storage_[page].reset(new float[bytes_per_page() / sizeof(float)]);
    pages->push_back(page);
  }
  in_use_ += count;
  return absl::OkStatus();
}

void KvCachePool::Release(const std::vector<int32_t>& pages) {
  absl::MutexLock lock(&mu_);
  for (int32_t p : pages) free_.push_back(p);
  in_use_ -= static_cast<int64_t>(pages.size());
}

int64_t KvCachePool::pages_in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

float* KvCachePool::Row(int32_t page, int64_t layer, bool value, int64_t token) {
  const int64_t w = options_.kv_width, t = options_.page_tokens;
  return storage_[page].get() + ((layer * 2 + (value ? 1 : 0)) * t + token) * w;
}

KvSequence::~KvSequence() { Clear(); }

void KvSequence::Clear() {
  if (!pages_.empty()) pool_->Release(pages_);
  pages_.clear();
  length_ = 0;
}

absl::Status KvSequence::Reserve(int64_t new_length) {
  const int64_t t = pool_->options().page_tokens;
  int64_t needed = (new_length + t - 1) / t - static_cast<int64_t>(pages_.size());
  if (needed <= 0) return absl::OkStatus();
  return pool_->Allocate(needed, &pages_);
}

float* KvSequence::KeyRow(int64_t layer, int64_t position) {
  const int64_t t = pool_->options().page_tokens;
  return pool_->Row(pages_[position / t], layer, false, position % t);
}

float* KvSequence::ValueRow(int64_t layer, int64_t position) {
  const int64_t t = pool_->options().page_tokens;
  return pool_->Row(pages_[position / t], layer, true, position % t);
}

}  // namespace dmoe::model
