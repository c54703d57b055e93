// The small-batch 2:4 CUDA kernel's bookkeeping (prunekit/linear24_decode.h) run on the CPU: a
// warp of the kernel emulated lane by lane with the header's offsets, selectors and fragment
// assembly, mma.sync.m16n8k16 emulated from the PTX ISA's fragment layout (written out here, apart
// from the header), and the kernel's shared-memory reduction; y must equal x W^T from the dense
// matrix. Shapes cover both n8 tile counts, every batch 1..16, and k % 64 == 32 (the half chunk).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "harness.h"
#include "prunekit/format24.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"
#include "prunekit/linear24_decode.h"

namespace {

namespace l24 = prunekit::linear24;

float half_value(uint16_t bits, bool bf16) {
  return bf16 ? prunekit::bf16_to_float(bits) : prunekit::fp16_to_float(bits);
}

// Exactly representable small values in both fp16 and bf16, so sums are exact in fp32.
uint16_t encode(int value, bool bf16) {
  const float f = float(value);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (bf16) return uint16_t(bits >> 16);
  // fp16 of a small integer: sign, exponent, 10-bit mantissa.
  if (value == 0) return 0;
  const uint32_t sign = value < 0 ? 0x8000u : 0u;
  uint32_t magnitude = uint32_t(value < 0 ? -value : value);
  int exponent = 0;
  while ((magnitude >> exponent) > 1) ++exponent;
  const uint32_t mantissa = (magnitude << (10 - exponent)) & 0x3ffu;
  return uint16_t(sign | uint32_t(exponent + 15) << 10 | mantissa);
}

uint16_t half_of(uint32_t word, int half) { return uint16_t(half ? word >> 16 : word & 0xffffu); }

// D (16x8) += A (16x16) B (16x8) from the 32 lanes' registers, per the PTX layout of
// mma.m16n8k16 with .row.col and 16-bit inputs, f32 accumulators.
void emulate_mma(float acc[32][4], const uint32_t a[32][4], const uint32_t b[32][2], bool bf16) {
  float A[16][16], B[16][8];
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      const int lane = 4 * (r % 8) + (c % 8) / 2, reg = r / 8 + 2 * (c / 8);
      A[r][c] = half_value(half_of(a[lane][reg], c % 2), bf16);
    }
  }
  for (int c = 0; c < 16; ++c) {
    for (int n = 0; n < 8; ++n) {
      const int lane = 4 * n + (c % 8) / 2, reg = c / 8;
      B[c][n] = half_value(half_of(b[lane][reg], c % 2), bf16);
    }
  }
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      float sum = 0;
      for (int c = 0; c < 16; ++c) sum += A[r][c] * B[c][n];
      const int lane = 4 * (r % 8) + n / 2, reg = 2 * (r / 8) + n % 2;
      acc[lane][reg] += sum;
    }
  }
}

uint32_t load32(const std::vector<uint16_t>& v, int64_t offset) {
  return uint32_t(v[offset]) | uint32_t(v[offset + 1]) << 16;
}

void check(int64_t batch, int64_t rows, int64_t k, bool bf16, std::mt19937& rng) {
  // A 2:4 weight over all group patterns with small integer values, and x likewise.
  std::uniform_int_distribution<int> pick(0, 5), value(-8, 8);
  const int pairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  std::vector<uint16_t> dense(rows * k, 0), x(batch * k);
  for (int64_t g = 0; g < rows * k / 4; ++g) {
    const int* p = pairs[pick(rng)];
    dense[4 * g + p[0]] = encode(value(rng), bf16);
    dense[4 * g + p[1]] = encode(value(rng), bf16);
  }
  for (auto& e : x) e = encode(value(rng), bf16);
  std::vector<uint16_t> values(rows * k / 2), meta(rows * k / 16);
  EXPECT(prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, 2, true, {0, rows})
             .ok());

  std::vector<float> y(batch * rows, NAN);
  const int n_tiles = batch <= 8 ? 1 : 2;
  const int64_t chunks = l24::chunk_count(k);
  uint32_t selectors[16];
  for (uint32_t code = 0; code < 16; ++code) selectors[code] = l24::expand_selectors(code);
  for (int64_t tile = 0; tile < l24::row_tiles(rows); ++tile) {
    const int64_t row0 = tile * l24::kWarpRows;
    static float partial[l24::kBlockWarps][l24::kWarpRows][16];
    for (int w = 0; w < l24::kBlockWarps; ++w) {
      float acc[2][2][32][4] = {};  // [m][n tile][lane][reg]
      for (int64_t chunk = w; chunk < chunks; chunk += l24::kBlockWarps) {
        for (int s = 0; s < 4; ++s) {
          uint32_t a[2][32][4], b[2][32][2];
          for (int lane = 0; lane < 32; ++lane) {
            const bool has = l24::lane_has_cols(lane, chunk, k);
            for (int m = 0; m < 2; ++m) {
              uint32_t words[2] = {0, 0}, sel[2] = {selectors[0], selectors[0]};
              for (int h = 0; h < 2; ++h) {
                const int64_t row = row0 + l24::a_row(lane, m, h);
                if (!has) continue;
                words[h] = load32(values, l24::lane_values_offset(lane, row, chunk, k) + 2 * s);
                sel[h] = selectors[(meta[l24::lane_meta_offset(lane, row, chunk, rows)] >> (4 * s)) & 15u];
              }
              if (!has) words[0] = words[1] = 0;
              l24::a_fragment(words[0], sel[0], words[1], sel[1], a[m][lane]);
            }
            for (int j = 0; j < n_tiles; ++j) {
              const int64_t n = 8 * j + l24::lane_row(lane);
              const int64_t col = l24::lane_first_col(lane, chunk) + 4 * s;
              const bool load = has && n < batch;
              b[j][lane][0] = load ? load32(x, n * k + col) : 0;
              b[j][lane][1] = load ? load32(x, n * k + col + 2) : 0;
            }
          }
          for (int m = 0; m < 2; ++m)
            for (int j = 0; j < n_tiles; ++j) emulate_mma(acc[m][j], a[m], b[j], bf16);
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        const int g = l24::lane_row(lane), t = l24::lane_quad(lane);
        for (int m = 0; m < 2; ++m) {
          for (int j = 0; j < n_tiles; ++j) {
            partial[w][16 * m + g][8 * j + 2 * t] = acc[m][j][lane][0];
            partial[w][16 * m + g][8 * j + 2 * t + 1] = acc[m][j][lane][1];
            partial[w][16 * m + g + 8][8 * j + 2 * t] = acc[m][j][lane][2];
            partial[w][16 * m + g + 8][8 * j + 2 * t + 1] = acc[m][j][lane][3];
          }
        }
      }
    }
    for (int64_t o = 0; o < l24::kWarpRows * batch; ++o) {
      const int64_t r = o % l24::kWarpRows, n = o / l24::kWarpRows;
      float sum = 0;
      for (int w = 0; w < l24::kBlockWarps; ++w) sum += partial[w][r][n];
      y[n * rows + row0 + r] = sum;
    }
  }

  int wrong = 0;
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t r = 0; r < rows; ++r) {
      double expected = 0;
      for (int64_t c = 0; c < k; ++c)
        expected += double(half_value(dense[r * k + c], bf16)) * half_value(x[n * k + c], bf16);
      wrong += !(float(expected) == y[n * rows + r]);
    }
  }
  if (wrong) {
    std::fprintf(stderr, "batch %lld rows %lld k %lld %s: %d outputs wrong\n", (long long)batch, (long long)rows,
                 (long long)k, bf16 ? "bf16" : "fp16", wrong);
  }
  EXPECT(wrong == 0);
}

}  // namespace

int main() {
  std::mt19937 rng(1623);
  // The selectors place v0 at idx0 and v1 at idx1 for every valid code.
  for (uint32_t idx0 = 0; idx0 < 4; ++idx0) {
    for (uint32_t idx1 = idx0 + 1; idx1 < 4; ++idx1) {
      const uint32_t sel = l24::expand_selectors(idx0 | idx1 << 2);
      const uint32_t lo = l24::byte_perm(0xBBBBAAAAu, 0u, sel), hi = l24::byte_perm(0xBBBBAAAAu, 0u, sel >> 16);
      const uint16_t cols[4] = {uint16_t(lo), uint16_t(lo >> 16), uint16_t(hi), uint16_t(hi >> 16)};
      for (uint32_t c = 0; c < 4; ++c) EXPECT(cols[c] == (c == idx0 ? 0xAAAA : c == idx1 ? 0xBBBB : 0));
    }
  }
  for (int64_t batch = 1; batch <= 16; ++batch) check(batch, 32, 96, batch % 2 == 0, rng);
  check(3, 64, 1024, false, rng);  // more chunks than warps
  check(16, 64, 544, true, rng);   // k % 64 == 32 with several rounds
  check(9, 96, 32, false, rng);    // a single half chunk
  if (prunekit::test::failures == 0) std::printf("linear24 decode bookkeeping: all checks passed\n");
  return prunekit::test::finish();
}
