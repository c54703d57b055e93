// Torch-free tests of the CUDA SparseGPT kernel's per-row algorithm (csrc/core/cuda/
// sparsegpt_obs_row.h) on a host "warp": 32 threads whose shuffles, ballots and syncs meet at a
// barrier, running the kernel's own code. Checked against a naive column-by-column loop in double
// precision (unstructured with a given mask, N:M chosen in the kernel) over every register count
// (chunks of 1..128 columns), and the index math of obs_block_layout.h.
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "harness.h"
#include "prunekit/obs_block_layout.h"
#include "sparsegpt_obs_row.h"

namespace {

using namespace prunekit::obs;
using prunekit::test::exact_buffer;
using prunekit::test::poisoned;

// A reusable barrier for the 32 lane threads (C++17 has no std::barrier).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      released_.notify_all();
    } else {
      released_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int count_, arrived_ = 0;
  uint64_t generation_ = 0;
};

struct WarpState {
  Barrier barrier{kWarpLanes};
  float values[kWarpLanes];
  bool predicates[kWarpLanes];
};

// The Warp interface of obs_row on host threads: every collective is a barrier round.
struct HostWarp {
  WarpState* state;
  int lane_id;
  int lane() const { return lane_id; }
  float shfl(float value, int src) const {
    state->values[lane_id] = value;
    state->barrier.wait();
    const float out = state->values[src];
    state->barrier.wait();
    return out;
  }
  unsigned ballot(bool predicate) const {
    state->predicates[lane_id] = predicate;
    state->barrier.wait();
    unsigned bits = 0;
    for (int t = 0; t < kWarpLanes; ++t) bits |= unsigned(state->predicates[t]) << t;
    state->barrier.wait();
    return bits;
  }
  void sync() const { state->barrier.wait(); }
};

// The column loop as SparseGPT's reference writes it, in double precision (one row).
void naive_row(std::vector<double>& w, const std::vector<double>& h, int width, std::vector<char>& keep, int n, int m) {
  for (int i = 0; i < width; ++i) {
    if (m > 0 && i % m == 0) {
      for (int j = 0; j < m; ++j) {
        const double sj = std::pow(w[i + j] / h[(i + j) * width + i + j], 2);
        int rank = 0;
        for (int t = 0; t < m; ++t) {
          const double st = std::pow(w[i + t] / h[(i + t) * width + i + t], 2);
          rank += st > sj || (st == sj && t < j);
        }
        keep[i + j] = rank < n;
      }
    }
    const double q = keep[i] ? w[i] : 0.0, e = (w[i] - q) / h[i * width + i];
    for (int j = i; j < width; ++j) w[j] -= e * h[i * width + j];
    w[i] = q;
  }
}

template <int Q>
void run_row(const std::vector<float>& tri, float* w, float* err, bool* keep, int width, int n, int m) {
  WarpState state;
  float scratch[kMaxGroup];
  std::vector<std::thread> lanes;
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    lanes.emplace_back(
        [&, lane] { obs_row<Q>(HostWarp{&state, lane}, tri.data(), scratch, w, err, keep, width, n, m); });
  }
  for (auto& t : lanes) t.join();
}

void run_row_any(const std::vector<float>& tri, float* w, float* err, bool* keep, int width, int n, int m) {
  switch (register_columns(width)) {
    case 1: return run_row<1>(tri, w, err, keep, width, n, m);
    case 2: return run_row<2>(tri, w, err, keep, width, n, m);
    case 3: return run_row<3>(tri, w, err, keep, width, n, m);
    default: return run_row<4>(tri, w, err, keep, width, n, m);
  }
}

void check_rows(std::mt19937& rng) {
  std::normal_distribution<float> normal;
  struct Case {
    int width, n, m;
  };
  // Every register count; m dividing 32, straddling lanes (3, 12, 24) and spanning registers (64).
  const Case cases[] = {{8, 0, 0},     {33, 0, 0},    {100, 0, 0}, {128, 0, 0},  {16, 2, 4},
                        {128, 2, 4},   {96, 4, 8},    {120, 1, 3}, {72, 5, 12},  {96, 7, 24},
                        {128, 16, 64}, {128, 63, 64}, {64, 1, 2},  {128, 16, 32}};
  for (const Case& c : cases) {
    const int width = c.width;
    for (int trial = 0; trial < (c.m > 0 ? 2 : 1); ++trial) {
      // Trial 1 (N:M): a diagonal factor and pairs of opposite weights: every group has exact ties.
      const bool ties = trial == 1;
      std::vector<float> h(width * width, 0.0f), tri(tri_size(width));
      for (int i = 0; i < width; ++i)
        for (int j = i; j < width; ++j)
          h[i * width + j] = i == j ? (ties ? 1.0f : 1.0f + 0.1f * float(i % 3)) : (ties ? 0.0f : 0.05f * normal(rng));
      for (int i = 0; i < width; ++i)
        for (int j = i; j < width; ++j) tri[tri_offset(i, j, width)] = h[i * width + j];
      std::vector<float> w(width), err = poisoned(width);  // every error must be written
      for (auto& v : w) v = normal(rng);
      if (ties) {
        for (int j = 0; j + 1 < width; j += 2) w[j + 1] = -w[j];
      }
      std::vector<char> keep_naive(width, 1);
      for (int j = 0; j < width; ++j) keep_naive[j] = c.m > 0 ? 1 : rng() % 3 != 0;
      auto keep = exact_buffer<bool>(width);
      for (int j = 0; j < width; ++j) keep[j] = keep_naive[j];
      std::vector<double> wd(w.begin(), w.end()), hd(h.begin(), h.end());
      naive_row(wd, hd, width, keep_naive, c.n, c.m);
      run_row_any(tri, w.data(), err.data(), keep.get(), width, c.n, c.m);
      int kept = 0;
      for (int j = 0; j < width; ++j) {
        EXPECT(keep[j] == bool(keep_naive[j]));
        EXPECT(std::fabs(w[j] - wd[j]) <= 1e-4 * (1 + std::fabs(wd[j])));
        if (!keep[j]) EXPECT(w[j] == 0.0f);
        if (keep[j]) EXPECT(err[j] == 0.0f);
        kept += keep[j];
      }
      if (c.m > 0) EXPECT(kept == width / c.m * c.n);
    }
  }
  std::printf("obs_row on a host warp checked (%zu cases)\n", sizeof(cases) / sizeof(cases[0]));
}

void check_layout() {
  // The packed triangle is a bijection onto [0, tri_size), rows in order.
  for (int64_t width : {1, 2, 7, 32, 33, 128}) {
    std::vector<int> seen(tri_size(width), 0);
    int64_t expected = 0;
    for (int64_t i = 0; i < width; ++i) {
      for (int64_t j = i; j < width; ++j) {
        const int64_t offset = tri_offset(i, j, width);
        EXPECT(offset == expected);
        ++expected;
        if (offset >= 0 && offset < tri_size(width)) ++seen[offset];
      }
    }
    for (int count : seen) EXPECT(count == 1);
  }
  // Chunks hold whole N:M groups, never exceed the kernel's width unless one group does.
  EXPECT(chunk_width(kCudaMaxChunk, 0) == 128);
  EXPECT(chunk_width(kCudaMaxChunk, 3) == 126);
  EXPECT(chunk_width(kCudaMaxChunk, 64) == 128);
  EXPECT(chunk_width(kGenericChunk, 3) == 15);
  EXPECT(chunk_width(kGenericChunk, 64) == 64);
  for (int64_t m = 1; m <= kMaxGroup; ++m) {
    const int64_t width = chunk_width(kCudaMaxChunk, m);
    EXPECT(width % m == 0 && width <= kCudaMaxChunk && width + m > kCudaMaxChunk);
  }
  EXPECT(register_columns(1) == 1 && register_columns(32) == 1 && register_columns(33) == 2 &&
         register_columns(128) == 4);
  // The shared memory of a 128-column chunk stays under the 48 KiB that needs no opt-in.
  EXPECT(cuda_smem_bytes(kCudaMaxChunk) <= 48 * 1024);
  EXPECT(cuda_scratch_offset(7) % 4 == 0 && cuda_scratch_offset(7) >= tri_size(7));
  // Grid: no more blocks than warps of rows, no more than are resident at once.
  EXPECT(cuda_grid_blocks(1, 132, 6) == 1);
  EXPECT(cuda_grid_blocks(4096, 132, 6) == 512);
  EXPECT(cuda_grid_blocks(1 << 20, 132, 6) == 792);
  EXPECT(cuda_grid_blocks(100, 0, 0) == 1);
  std::printf("obs layout checked\n");
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  check_layout();
  check_rows(rng);
  return prunekit::test::finish();
}
