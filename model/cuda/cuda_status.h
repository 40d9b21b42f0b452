// CUDA and cuBLAS errors as absl::Status (STYLE.md §5): launchers and host code return them;
// nothing here aborts. Host-only header (no device code).
//
//   DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(...));
//   Kernel<<<grid, block, 0, stream>>>(...);
//   DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());   // after every launch (llm.c)
#ifndef DMOE_MODEL_CUDA_CUDA_STATUS_H_
#define DMOE_MODEL_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace dmoe::gpu {

// Maps `error` to a status whose message names the failed expression and the CUDA error:
// "cudaMalloc(&p, n) failed: cudaErrorMemoryAllocation (out of memory) at file.cc:12".
// Codes: out of memory -> RESOURCE_EXHAUSTED; invalid value / configuration -> INVALID_ARGUMENT;
// no device / insufficient driver -> FAILED_PRECONDITION; sticky errors (see IsStickyCudaError)
// -> INTERNAL with "sticky" in the message; everything else -> INTERNAL.
absl::Status CudaErrorToStatus(cudaError_t error, const char* expr, const char* file, int line);

// True for errors that leave the CUDA context unusable (illegal address, launch failure,
// misaligned address, ...). STYLE.md §5: the process cannot recover; its owner logs, marks
// itself unready and exits.
bool IsStickyCudaError(cudaError_t error);
// True for a status CudaErrorToStatus made from a sticky error (what a device owner checks
// after a failed call to decide to exit).
bool IsStickyStatus(const absl::Status& status);

// cuBLAS status codes (cublasStatus_t, passed as int so this header needs no cuBLAS include).
// CUBLAS_STATUS_ALLOC_FAILED -> RESOURCE_EXHAUSTED, INVALID_VALUE / NOT_SUPPORTED ->
// INVALID_ARGUMENT, others INTERNAL.
absl::Status CublasErrorToStatus(int status, const char* expr, const char* file, int line);

}  // namespace dmoe::gpu

#define DMOE_CUDA_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                                    \
    const cudaError_t dmoe_cuda_error_ = (expr);                                          \
    if (dmoe_cuda_error_ != cudaSuccess) {                                                \
      return ::dmoe::gpu::CudaErrorToStatus(dmoe_cuda_error_, #expr, __FILE__, __LINE__); \
    }                                                                                     \
  } while (0)

#define DMOE_CUBLAS_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                         \
    const int dmoe_cublas_status_ = static_cast<int>(expr);                                    \
    if (dmoe_cublas_status_ != 0) {                                                            \
      return ::dmoe::gpu::CublasErrorToStatus(dmoe_cublas_status_, #expr, __FILE__, __LINE__); \
    }                                                                                          \
  } while (0)

#endif  // DMOE_MODEL_CUDA_CUDA_STATUS_H_
