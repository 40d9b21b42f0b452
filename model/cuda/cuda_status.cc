#include "model/cuda/cuda_status.h"

#include <cublas_api.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dmoe::gpu {

bool IsStickyCudaError(cudaError_t error) {
  switch (error) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    // "The process ... must be terminated and relaunched" (driver_types.h, CUDA 13).
    case cudaErrorContained:
    case cudaErrorTensorMemoryLeak:
    case cudaErrorMpsClientTerminated:
    case cudaErrorExternalDevice:
      return true;
    default:
      return false;
  }
}

constexpr absl::string_view kStickyMarker = "; sticky error, the CUDA context is unusable";

bool IsStickyStatus(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInternal &&
         absl::StrContains(status.message(), kStickyMarker);
}

absl::Status CudaErrorToStatus(cudaError_t error, const char* expr, const char* file, int line) {
  std::string message = absl::StrCat(expr, " failed: ", cudaGetErrorName(error), " (",
                                     cudaGetErrorString(error), ") at ", file, ":", line);
  if (IsStickyCudaError(error)) {
    return absl::InternalError(absl::StrCat(message, kStickyMarker));
  }
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CublasErrorToStatus(int status, const char* expr, const char* file, int line) {
  const auto s = static_cast<cublasStatus_t>(status);
  std::string message = absl::StrCat(expr, " failed: ", cublasGetStatusName(s), " (",
                                     cublasGetStatusString(s), ") at ", file, ":", line);
  switch (s) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(message);
    case CUBLAS_STATUS_INVALID_VALUE:
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace dmoe::gpu
