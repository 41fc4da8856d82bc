// cuBLAS is opened at run time (dlopen) so the addon builds where only nvcc exists and reports a
// clear error, not a loader failure, where cuBLAS is missing. No cuBLAS headers are needed: the
// few entry points and enum values used are declared here (values from cublas_api.h, stable
// across cuBLAS 11-13).
#pragma once

#include <string>

struct CUstream_st;

namespace idforge {
namespace cuda {

struct cublasContext;
using cublasHandle_t = cublasContext*;

enum : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum : int { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2 };
enum : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };
enum : int { CUBLAS_GEMM_DEFAULT = -1 };
enum : int { CUDA_R_32F_ = 0, CUDA_R_16F_ = 2 };  // cudaDataType values

struct Cublas {
  using Create = int (*)(cublasHandle_t*);
  using Destroy = int (*)(cublasHandle_t);
  using SetStream = int (*)(cublasHandle_t, CUstream_st*);
  using SetMathMode = int (*)(cublasHandle_t, int);
  using SetWorkspace = int (*)(cublasHandle_t, void*, size_t);
  using GemmEx = int (*)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int,
                         const void*, int, int, const void*, void*, int, int, int, int);
  using GemmStridedBatchedEx = int (*)(cublasHandle_t, int, int, int, int, int, const void*,
                                       const void*, int, int, long long, const void*, int, int,
                                       long long, const void*, void*, int, int, long long, int,
                                       int, int);
  Create create = nullptr;
  Destroy destroy = nullptr;
  SetStream setStream = nullptr;
  SetMathMode setMathMode = nullptr;
  SetWorkspace setWorkspace = nullptr;  // optional (cuBLAS >= 11.? exports cublasSetWorkspace_v2)
  GemmEx gemmEx = nullptr;
  GemmStridedBatchedEx gemmStridedBatchedEx = nullptr;
  std::string path;  // the library that was opened
};

// Opens cuBLAS once per process. Returns nullptr and fills *why (the places tried and what to
// set) when it cannot be found; never throws, so cudaInfo() can call it.
const Cublas* loadCublas(std::string* why);

}  // namespace cuda
}  // namespace idforge
