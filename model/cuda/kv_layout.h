// Layout of the device KV cache pool, shared by the attention and KV-write ops (POD, no
// device code). The pool is one F32 allocation of pages; a page holds `page_tokens`
// consecutive positions of one sequence for every layer:
//   pool[page][layer][kind][token][kv_width], kind 0 = K, 1 = V, kv_width = Nkv * D
// (K/V rows after QK-norm and RoPE, exactly what the CPU KvCachePool stores).
#ifndef DMOE_MODEL_CUDA_KV_LAYOUT_H_
#define DMOE_MODEL_CUDA_KV_LAYOUT_H_

#include <cstdint>

namespace dmoe::gpu {

struct KvPoolLayout {
  int64_t num_layers = 0;
  int64_t kv_width = 0;     // Nkv * D
  int64_t page_tokens = 0;  // tokens per page

  // Floats per page.
  int64_t page_floats() const { return num_layers * 2 * page_tokens * kv_width; }
};

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_KV_LAYOUT_H_
