// CSR16 GEMV and SpMM, AVX-512 build (the kernels: csr16_gemv_impl.h, spmm_avx512_impl.h).
#include "csr16_gemv_impl.h"
#include "spmm_avx512_impl.h"

namespace prunekit::cpu {
namespace {

// CSR16's side of the AVX-512 SpMM (a RowSource): a row's nonzeros of a k-block are the run of
// its indices below the block's end, found 32 at a time and read in place. Rows are in column
// order in prunekit's weights; a row that is not still gets each nonzero once (a block takes the
// run up to its first later column, the last block the rest), only with x less often in L1.
class Csr16Rows {
 public:
  using Index = uint16_t;
  explicit Csr16Rows(const uint16_t* col_indices) : col_indices_(col_indices) {}

  void prefetch(int64_t /*r*/, int64_t /*c0*/, int64_t /*c1*/, int64_t at, int64_t nonzeros) const {
    prefetch_lines(reinterpret_cast<uintptr_t>(col_indices_ + at), nonzeros * 2);
  }

  bool columns(int64_t /*r*/, int64_t /*c0*/, int64_t c1, bool last, int64_t at, int64_t limit, const uint16_t*& column,
               int64_t& nnz) const {
    column = col_indices_ + at;
    const int64_t available = limit - at;
    // c1 <= 65536: compare with c1 - 1, which fits 16 bits. Masked loads read nothing past the row.
    const __m512i highest = _mm512_set1_epi16(int16_t(uint16_t(c1 - 1)));
    int64_t n = 0;
    while (n < available) {
      const int64_t left = available - n;
      const __mmask32 lanes = left >= 32 ? ~__mmask32(0) : _bzhi_u32(~0u, unsigned(left));
      const __mmask32 below = _mm512_mask_cmple_epu16_mask(lanes, _mm512_maskz_loadu_epi16(lanes, column + n), highest);
      if (below != lanes) {
        n += __builtin_ctz(~below);
        break;
      }
      n += left >= 32 ? 32 : left;
    }
    nnz = n;
    return !last || n == available;  // on the last block c1 = k: a column >= k stops the run
  }

 private:
  const uint16_t* col_indices_;
};

}  // namespace

Status csr16_gemv_avx512(const Csr16WeightView& w, const GemvArgs& a, RowRange range) {
  return csr16_gemv_impl(w, a, range);
}

Status csr16_spmm_avx512(const Csr16WeightView& w, const SpmmArgs& a, RowRange range) {
  if (w.cols < 1 || w.cols > kCsr16MaxColumns) return Status{StatusCode::kBadArgument, 0, 0};
  const SpmmCall call{w.values, w.value_type, w.row_offsets, w.cols, a.x,         a.ldx,    a.cols_x,
                      a.bias,   a.activation, a.y,           a.ldy,  range.begin, range.end};
  Csr16Rows source(w.col_indices);
  return spmm_rows(call, source);
}

}  // namespace prunekit::cpu
