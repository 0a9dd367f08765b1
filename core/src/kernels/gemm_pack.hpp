#pragma once
// Packing interface of the float GEMM: private to core/src/kernels/ (the
// public entry points are in loragrad/kernels/gemm.hpp; tests/test_gemm.cpp
// checks this contract white-box).
//
// The float GEMM never reads A or B directly in its inner loop: it first copies
// a block of op(A) and a block of op(B) into "panels" laid out exactly in the
// order the register micro-kernel consumes them. Packing is therefore the only
// place that knows how B is stored. A weight kept in another format (e.g. NF4
// blocks plus scales) reaches the same micro-kernel through gemm_decoded_b
// (gemm.hpp), whose source decodes a few rows at a time and packs them here:
// no float copy of the whole weight ever exists.
//
// ---------------------------------------------------------------------------
// Packed B panel layout (the contract every BPanelSource must follow)
// ---------------------------------------------------------------------------
// pack(k0, kc, n0, nc, dst) writes the block  P = op(B)[k0 : k0+kc, n0 : n0+nc]
// (op(B) is the logical (K, N) right-hand operand) as ceil(nc / kGemmNR)
// column slivers, one after another:
//
//   sliver s (s = 0 .. ceil(nc/NR)-1) starts at  dst + s * kc * NR  and holds
//   kc rows of NR floats:
//       dst[s*kc*NR + k*NR + c] = P[k][s*NR + c]      for s*NR + c <  nc
//       dst[s*kc*NR + k*NR + c] = 0.0f                for s*NR + c >= nc
//   (k = 0 .. kc-1, c = 0 .. NR-1, NR = kGemmNR)
//
// i.e. inside a sliver the NR columns of one k are contiguous (one row of
// the register tile's worth of B, 128 bytes with AVX-512), then the next k
// follows. The padding columns of the last sliver MUST be written as zeros:
// the micro-kernel always computes full NR-wide tiles; the padded lanes are
// discarded, but zeros keep them free of NaN/Inf and denormal slow paths.
//
// Example, NR = 32, kc = 512, nc = 70: three slivers of 512 x 32 floats
// (64 KiB each); sliver 2 holds columns 64..69 of P in lanes 0..5 of each
// row and zeros in lanes 6..31. An NF4 source for a weight W stored (N, K)
// (op(B) = W^T) fills sliver s row k lane c with dequant(W[n0 + s*NR + c][k0 + k]).
//
// Total floats written: packed_b_floats(kc, nc) = kc * round_up(nc, NR).
//
// Guarantees the driver gives a source:
//   * k0 is a multiple of kGemmKC and 1 <= kc <= kGemmKC (the last block of K
//     may be shorter), so a source with quantisation blocks of 64 along K sees
//     block-aligned k0 (kGemmKC is a multiple of 64); kc is a multiple of 64
//     except in the last block of K.
//   * n0 is a multiple of NR (relative to column 0 of op(B)); nc >= 1.
//   * dst is 64-byte aligned.
//   * Several threads may call pack() concurrently on the same source with
//     disjoint or identical (k0, n0) ranges, always into distinct dst
//     buffers, so pack() must be thread-safe (it is const: keep it free of
//     mutable scratch state, or make that state thread-local).
//   * pack() is called outside the micro-kernel's loops, once per (KC, NC)
//     block and thread that needs it (a one-panel product run on T threads
//     may pack the same block T times, each thread into its own buffer).
//     Per element packed the GEMM does 2*M flops (2*M/T per thread copy),
//     so a dequantising pack may cost a few cycles per element.
#include <cstdint>

namespace loragrad::kernels {

// Register tile of the float micro-kernel: it updates a (kGemmMR, kGemmNR)
// block of C per call. NR is a whole number of SIMD vectors (the vector dim is
// N, the contiguous dim of row-major C), MR rows are broadcast from A.
// (AVX-512: 12 x 32 measured best or tied with 14x32, 6x64, 8x48 on the
// shapes of bench/gemm_bench.cpp; it leaves 8 zmm registers spare.)
#if defined(__AVX512F__)
inline constexpr int64_t kGemmMR = 12;
inline constexpr int64_t kGemmNR = 32;  // 2 x 16 floats
#elif defined(__AVX2__)
inline constexpr int64_t kGemmMR = 6;
inline constexpr int64_t kGemmNR = 16;  // 2 x 8 floats
#else
inline constexpr int64_t kGemmMR = 4;
inline constexpr int64_t kGemmNR = 8;  // 2 x 4 floats (SSE2)
#endif

// Depth of one packed block (K is cut into blocks of this many rows of op(B)).
// C is read and written once per depth block, so a deep block halves the
// C traffic of K = 1024 products compared with 256 (measured: +3-6% on
// 4096 x 1024 x 1024); the packed slivers it implies still stream from L2
// fast enough (A: 24 KiB, B: 64 KiB per sliver).
inline constexpr int64_t kGemmKC = 512;

// Floats a packed B block of kc rows and nc columns occupies.
constexpr int64_t packed_b_floats(int64_t kc, int64_t nc) {
  return kc * ((nc + kGemmNR - 1) / kGemmNR) * kGemmNR;
}

// A producer of packed op(B) blocks, see the layout contract above.
struct BPanelSource {
  virtual ~BPanelSource() = default;
  // Logical shape of op(B) is (K, N); the driver checks its K, N against these.
  virtual int64_t rows() const = 0;  // K
  virtual int64_t cols() const = 0;  // N
  // Write op(B)[k0:k0+kc, n0:n0+nc] into dst in the sliver layout above.
  virtual void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const = 0;
};

// The plain source: a float matrix in memory. op(B) = B (stored (K, N), row
// stride ldb) or B^T (trans_b: stored (N, K), row stride ldb).
class StridedBSource final : public BPanelSource {
 public:
  StridedBSource(const float* B, int64_t ldb, bool trans_b, int64_t K, int64_t N)
      : B_(B), ldb_(ldb), trans_b_(trans_b), K_(K), N_(N) {}
  int64_t rows() const override { return K_; }
  int64_t cols() const override { return N_; }
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const override;

 private:
  const float* B_;
  int64_t ldb_;
  bool trans_b_;
  int64_t K_, N_;
};

// C (M, N) = alpha * op(A) @ op(B) + beta * C with op(B) supplied by a source
// (B.rows() == K, B.cols() == N, else loragrad::ShapeError). Same semantics as
// gemm() otherwise: beta == 0 overwrites C without reading it.
void gemm_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const BPanelSource& B, float beta, float* C, int64_t ldc);

}  // namespace loragrad::kernels
