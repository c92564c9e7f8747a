// Plain C++ (no ATen) helpers shared by the CPU and CUDA kernels: the
// element-wise math and mask layout live here once, so both devices agree.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RELU_EXT_HD __host__ __device__ __forceinline__
#else
#define RELU_EXT_HD inline
#endif
