// SparseGPT's in-block OBS column updates of one weight row by one warp, written against a small
// Warp interface (lane id, shuffle, ballot, sync) so that the CUDA kernel runs it on a real warp
// and the C++ tests run the same code on 32 host threads (tests/core/test_core_obs_warp.cc).
//
// Lane t holds columns t, t + 32, ... of the row's chunk in registers c[0..Q). Column i's value
// is broadcast from its lane; a pruned column's error e = w_i / d_i updates every later column of
// the chunk from the packed upper triangle of the chunk's inverse-Hessian factor (tri). A kept
// column has a zero error and changes nothing, so it is skipped. The arithmetic per entry is the
// CPU kernel's: scores (w / d)^2, errors (w - kept) / d, updates w_j -= e * h_ij in column order.
#pragma once

#include "prunekit/obs_block_layout.h"

#if defined(__CUDACC__)
#define PRUNEKIT_WARP_FN __device__ __forceinline__
#define PRUNEKIT_UNROLL _Pragma("unroll")
#else
#define PRUNEKIT_WARP_FN inline
#define PRUNEKIT_UNROLL
#endif

namespace prunekit::obs {

// The N:M choice for the group of m columns starting at `first` (m <= kMaxGroup): per row, the n
// largest (w_c / d_c)^2 on the updated weights, ties keeping the lower column (as select_nm on
// CPU). Updates the warp-uniform keep bits of the group's columns.
template <int Q, class Warp>
PRUNEKIT_WARP_FN void choose_group(const Warp& warp, const float* tri, float* scratch, const float (&c)[Q],
                                   unsigned (&keep_bits)[Q], int first, int width, int n, int m) {
  const int lane = warp.lane();
  warp.sync();  // every lane is done reading the previous group's scores
  PRUNEKIT_UNROLL
  for (int p = 0; p < Q; ++p) {
    const int j = p * kWarpLanes + lane;
    if (j >= first && j < first + m) {
      const float scaled = c[p] / tri[tri_row_start(j, width)];
      scratch[j - first] = scaled * scaled;
    }
  }
  warp.sync();
  PRUNEKIT_UNROLL
  for (int p = 0; p < Q; ++p) {
    const int j = p * kWarpLanes + lane;
    const bool own = j >= first && j < first + m;
    bool kept = false;
    if (own) {
      const int self = j - first;
      const float score = scratch[self];
      int rank = 0;
      for (int t = 0; t < m; ++t) {
        const float other = scratch[t];
        rank += t < self ? other >= score : (t > self && other > score);
      }
      kept = rank < n;
    }
    const unsigned owners = warp.ballot(own), kept_bits = warp.ballot(kept);
    keep_bits[p] = (keep_bits[p] & ~owners) | kept_bits;
  }
}

// One row of a chunk of `width` <= 32 Q columns. w, err and keep point at the row's first column
// of the chunk. Unstructured (m == 0): keep is the mask chosen beforehand (read); N:M: the mask is
// chosen here and written to keep. err receives the row's errors (0 for kept columns).
template <int Q, class Warp>
PRUNEKIT_WARP_FN void obs_row(const Warp& warp, const float* tri, float* scratch, float* w, float* err, bool* keep,
                              int width, int n, int m) {
  const int lane = warp.lane();
  float c[Q], e[Q];
  unsigned keep_bits[Q];
  PRUNEKIT_UNROLL
  for (int p = 0; p < Q; ++p) {
    const int j = p * kWarpLanes + lane;
    const bool inside = j < width;
    c[p] = inside ? w[j] : 0.0f;
    e[p] = 0.0f;
    // Columns past the chunk count as kept so that nothing ever reads them.
    keep_bits[p] = warp.ballot(!inside || (m == 0 && keep[j]));
  }
  PRUNEKIT_UNROLL
  for (int q = 0; q < Q; ++q) {
    for (int l = 0; l < kWarpLanes; ++l) {
      const int i = q * kWarpLanes + l;
      if (i >= width) break;
      if (m > 0 && i % m == 0) choose_group<Q>(warp, tri, scratch, c, keep_bits, i, width, n, m);
      if ((keep_bits[q] >> l) & 1u) continue;                  // warp-uniform
      const float* h_row = tri + tri_row_start(i, width) - i;  // h_row[j] = h(i, j) for j >= i
      const float error = warp.shfl(c[q], l) / h_row[i];
      if (lane == l) {
        c[q] = 0.0f;
        e[q] = error;
      }
      PRUNEKIT_UNROLL
      for (int p = q; p < Q; ++p) {
        const int j = p * kWarpLanes + lane;
        if (j > i && j < width) c[p] -= error * h_row[j];
      }
    }
  }
  PRUNEKIT_UNROLL
  for (int p = 0; p < Q; ++p) {
    const int j = p * kWarpLanes + lane;
    if (j < width) {
      w[j] = c[p];
      err[j] = e[p];
      if (m > 0) keep[j] = (keep_bits[p] >> lane) & 1u;
    }
  }
}

}  // namespace prunekit::obs
