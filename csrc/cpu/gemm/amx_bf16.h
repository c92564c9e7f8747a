// The bfloat16 forward of fused_linear_relu on Intel AMX tiles, free of
// ATen: relu(x @ W^T + bias) and its 1-bit mask, written from each finished
// block of the product while it is in cache (oneDNN's post-ops cannot
// write a mask, and its ReLU maps NaN to 0). Where it runs instead of oneDNN,
// and what it wins there: docs/cpu_gemm.md (gemm.cpp holds the choice).
//
// Method: W is packed once per call into panels of 32 output columns in the
// VNNI layout the tile instructions read (row p of a panel: the pairs
// W[j][2p], W[j][2p + 1] of its 32 columns j). Each thread owns whole 32-row
// blocks of x; per 256 rows (32 where the packed weight has at most 1 MiB) it
// keeps 4 accumulator tiles (32 x 32 floats) for
// each block of 32 x 32 outputs, reduces k in steps of 32 and applies the
// epilogue after the last step. Every output element is reduced in the same
// order whatever the split: results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace torch_relu_ext::cpu::amx {

// Whether this CPU and OS run AMX bfloat16 tiles: CPUID's AMX-TILE,
// AMX-BF16 and AVX512-BF16, and Linux's permission for tile data
// (requested on first call).
bool available();

// bfloat16 elements (as raw 16-bit words) of W (n x k) packed.
int64_t packed_elems(int64_t n, int64_t k);

// Packs panels [p0, p1) (32 columns each) of W (n x k, row stride ldw,
// unit column stride) into `packed`, which holds all the panels.
void pack_weight(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, int64_t p0, int64_t p1,
                 uint16_t* packed);

// out[r0:r1] (rows of n, contiguous) = relu(x[r0:r1] @ W^T + bias), with
// torch.relu's rounding, NaN and signed-zero rules, and, where mask is not
// null, the mask bits of those rows (bit r * n + j, LSB first; the rows'
// bytes are overwritten). x: row stride ldx, unit column stride. bias: null
// or n floats padded with zeros to whole panels. r0 is a multiple of kRows,
// r1 a multiple of kRows or m: callers split rows so.
void forward_rows(const uint16_t* x, int64_t ldx, int64_t r0, int64_t r1, int64_t n, int64_t k,
                  const uint16_t* packed, const float* bias, uint16_t* out, uint8_t* mask);

// The panel width (bias buffers are padded to a multiple of it) and the
// row block: forward_rows takes rows from multiples of kRows.
constexpr int64_t kPanel = 32;
constexpr int64_t kRows = 32;

}  // namespace torch_relu_ext::cpu::amx
