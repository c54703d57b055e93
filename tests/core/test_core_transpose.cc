// Torch-free tests of the fp32 transpose: every kernel of the tables of the ISAs this CPU runs, shapes with
// whole tiles, ragged edges and fewer rows or columns than one tile, row ranges that start and
// end inside tiles, padded row strides on either side, exact-size buffers (ASan) and a
// NaN-poisoned output: every element must be written exactly (bitwise) once, and nothing outside
// the range (or in the padding) touched.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "harness.h"
#include "prunekit/kernels_cpu.h"

namespace {

using namespace prunekit::cpu;
using namespace prunekit::test;

// src rows `ld_src` >= cols apart, dst rows `ld_dst` >= rows apart (the gaps must stay untouched).
void check(const char* name, TransposeFn transpose, int64_t rows, int64_t cols, int64_t row_begin, int64_t row_end,
           int64_t ld_src, int64_t ld_dst) {
  std::unique_ptr<float[]> src(new float[rows * ld_src]), dst(new float[cols * ld_dst]);
  for (int64_t i = 0; i < rows * ld_src; ++i) src[i] = float(i) * 0.5f - 7.0f;
  for (int64_t i = 0; i < cols * ld_dst; ++i) dst[i] = NAN;  // poisoned
  transpose(src.get(), cols, ld_src, dst.get(), ld_dst, {row_begin, row_end});
  int64_t wrong = 0;
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < ld_dst; ++r) {
      const float got = dst[c * ld_dst + r];
      const bool inside = r >= row_begin && r < row_end;
      wrong += inside ? !same_bits(got, src[r * ld_src + c]) : !std::isnan(got);
    }
  if (wrong)
    std::fprintf(stderr, "%s: %ld x %ld (ld %ld / %ld) rows [%ld, %ld): %ld wrong\n", name, long(rows), long(cols),
                 long(ld_src), long(ld_dst), long(row_begin), long(row_end), long(wrong));
  EXPECT(wrong == 0);
}

}  // namespace

int main() {
  for (const auto* table : tables_with_own(&CpuKernelConfig::transpose_f32)) {
    const char* name = isa_name(table->isa);
    const TransposeFn transpose = table->transpose_f32;
    for (int64_t rows : {1, 7, 8, 16, 17, 33, 128})
      for (int64_t cols : {1, 5, 8, 16, 31, 48, 130}) {
        check(name, transpose, rows, cols, 0, rows, cols, rows);
        if (rows > 4) check(name, transpose, rows, cols, 3, rows - 1, cols, rows);
        // padded strides (x^T and y^T around the SpMM have rows a whole number of lines apart)
        check(name, transpose, rows, cols, 0, rows, cols + 3, (rows + 15) / 16 * 16 + 16);
        if (rows > 4) check(name, transpose, rows, cols, 3, rows - 1, cols + 16, rows + 5);
      }
    std::printf("transpose (%s) checked\n", name);
  }
  return finish();
}
