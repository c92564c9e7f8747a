// Plain C++ (no ATen) helpers shared by the CPU kernels and, later, the CUDA
// kernels: the element-wise math lives here once so both devices agree bit for
// bit and the CPU test suite exercises it.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RELU_EXT_HD __host__ __device__ __forceinline__
#else
#define RELU_EXT_HD inline
#endif
