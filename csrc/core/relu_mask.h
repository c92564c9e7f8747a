// The packed ReLU mask that fused_linear_relu keeps for backward.
//
// A bit matrix over the (rows, out_features) output with a leading dimension
// of ld bits per row (relu_mask_ld: out_features on CPU; rounded up to 128 on
// CUDA, cuBLASLt's rule). Element (r, o) is bit e = r * ld + o: byte e / 8,
// bit e % 8 (LSB first). The tensor is uint8 [ceil(rows * ld / 8)]; padding
// bits are zero. A bit is 1 where the gradient passes: relu_passes
// (relu_math.h) in our kernels; cuBLASLt also sets it for exact zeros.
// Layout in full: docs/cuda.md.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace torch_relu_ext::core {

RELU_EXT_HD int64_t relu_mask_bytes(int64_t numel) { return (numel + 7) / 8; }

// Leading dimension (in bits) of the mask for a device kind.
RELU_EXT_HD int64_t relu_mask_ld(int64_t out_features, bool padded) {
  return padded ? (out_features + 127) / 128 * 128 : out_features;
}

RELU_EXT_HD int64_t relu_mask_bytes(int64_t rows, int64_t out_features, bool padded) {
  return relu_mask_bytes(rows * relu_mask_ld(out_features, padded));
}

RELU_EXT_HD bool relu_mask_bit(const uint8_t* mask, int64_t e) {
  return (mask[e >> 3] >> (e & 7)) & 1;
}

// Eight bytes that are each 0 or 1 -> one byte, byte i -> bit i. The product
// places each input byte's bit in the top byte without carries (all partial
// products are distinct powers of two).
inline uint8_t pack8(const uint8_t* flags) {
  uint64_t v = 0;
  std::memcpy(&v, flags, 8);
  return static_cast<uint8_t>((v * 0x0102040810204080ULL) >> 56);
}

// One mask byte -> eight bytes, byte i nonzero iff bit i is set.
inline uint64_t unpack8(uint8_t bits) {
  return (static_cast<uint64_t>(bits) * 0x0101010101010101ULL) & 0x8040201008040201ULL;
}

}  // namespace torch_relu_ext::core
