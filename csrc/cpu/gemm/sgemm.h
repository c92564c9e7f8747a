// A float32 matrix product for x86-64 CPUs with AVX-512, free of ATen, whose
// last reduction step can apply the fused_linear_relu epilogue (bias, ReLU,
// mask bits) to the result while it is still in registers: the output and
// its mask are written once. Where it runs instead of oneDNN or ATen, and
// what it wins there: docs/cpu_gemm.md (gemm.cpp holds the choice).
//
// Method (as BLIS, Goto & van de Geijn 2008): C (M x N) = A (M x K) B (K x N)
// is cut into column blocks of nc and reduction blocks of kc. B's block is
// packed once into panels of nr columns (row k of a panel: nr consecutive
// floats), shared by all threads; each thread owns a range of C's rows, packs
// mc x kc blocks of A into panels of mr rows (column k of a panel: mr
// consecutive floats) and runs an mr x nr register kernel over them. The
// caller runs the blocks in order and splits the rows among threads; the
// result does not depend on the split (every element is reduced in the same
// order), so it is bitwise the same for any thread count.
#pragma once

#include <cstdint>

namespace torch_relu_ext::cpu::sgemm {

// A strided matrix: element (i, j) is p[i * rs + j * cs].
struct View {
  const float* p;
  int64_t rs;
  int64_t cs;
};

// Applied to each element of C in the last reduction block: y = c + bias[j]
// (bias may be null), then, when relu, the mask bit of (i, j) is set where y
// is not <= 0 (positive or NaN: exactly where ReLU passes a gradient) and
// y = y < 0 ? 0 : y (csrc/core/relu_math.h). mask may be null; otherwise bit i * mask_ld + j (LSB
// first) is OR'ed into bytes the caller zeroed. A thread's first row times
// mask_ld must be a multiple of 8 (rows start on mask bytes).
struct Epilogue {
  const float* bias;
  bool relu;
  uint8_t* mask;
  int64_t mask_ld;
};

struct Kernels {
  int64_t mr, nr;  // register tile (rows x columns of C)
  int64_t kc, mc;  // reduction block, rows of A per packed block
  int64_t nc;      // columns of C per packed block of B

  int64_t packed_b_floats;   // a packed kc x nc block of B (panels padded to nr)
  int64_t a_scratch_floats;  // one thread's packed mc x kc block of A
  // Packs B[k0:k0+kc, n0:n0+nc]'s panels [p0, p1) (nr columns each) into dst,
  // which holds the whole block's panels.
  void (*pack_b)(View b, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int64_t p0, int64_t p1,
                 float* dst);
  // C[m0:m1, n0:n0+nc] (=, or += when accumulate) A[m0:m1, k0:k0+kc] x the
  // packed block of B; ep (may be null) is applied when it is given, which
  // the caller does on the last reduction block. C is row-major (ldc).
  void (*block)(View a, int64_t m0, int64_t m1, int64_t k0, int64_t kc, const float* packed_b,
                int64_t n0, int64_t nc, float* c, int64_t ldc, bool accumulate, const Epilogue* ep,
                float* a_scratch);
};

// The AVX-512 kernels; null where they are not built (not x86-64). The
// caller checks that the CPU runs AVX-512 (the avx512 loop tables).
const Kernels* avx512();

}  // namespace torch_relu_ext::cpu::sgemm
