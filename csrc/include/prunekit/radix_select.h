// Selection of the n-th largest of m floating-point values by radix digits (torch-free, scalar).
// Comparison-based selection (nth_element) mispredicts about every other comparison on scores;
// counting passes over the digits of order-preserving integer keys have no data-dependent branch.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace prunekit::cpu {

// Unsigned integer keys in the order of the floats (-0.0 read as +0.0, its equal).
template <typename Compute>
using OrderedKey = std::conditional_t<sizeof(Compute) == 8, uint64_t, uint32_t>;

template <typename Compute>
OrderedKey<Compute> to_ordered_key(Compute value) {
  using Key = OrderedKey<Compute>;
  constexpr Key sign = Key{1} << (8 * sizeof(Key) - 1);
  value += Compute(0);  // -0.0 -> +0.0
  Key bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return (bits & sign) ? ~bits : (bits | sign);
}

template <typename Compute>
Compute from_ordered_key(OrderedKey<Compute> key) {
  using Key = OrderedKey<Compute>;
  constexpr Key sign = Key{1} << (8 * sizeof(Key) - 1);
  const Key bits = (key & sign) ? (key & ~sign) : ~key;
  Compute value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// The n-th largest (1 <= n <= m) of m non-NaN values, by most-significant-digit radix selection:
// each 8-bit digit's histogram names the bucket holding it, and only that bucket's keys go on,
// compacted in place. ``keys`` is scratch of at least m entries.
template <typename Compute>
Compute nth_largest(const Compute* values, int64_t m, int64_t n, std::vector<OrderedKey<Compute>>& keys) {
  using Key = OrderedKey<Compute>;
  for (int64_t i = 0; i < m; ++i) keys[i] = to_ordered_key(values[i]);
  Key* current = keys.data();
  int64_t count = m, rank = n;  // the rank-th largest of current[0, count)
  for (int shift = 8 * int(sizeof(Key)) - 8; shift >= 0; shift -= 8) {
    int64_t histogram[256] = {};
    for (int64_t i = 0; i < count; ++i) ++histogram[(current[i] >> shift) & 0xff];
    int digit = 255;
    while (histogram[digit] < rank) rank -= histogram[digit--];
    if (histogram[digit] == count) continue;  // every key shares this digit
    int64_t kept = 0;
    for (int64_t i = 0; i < count; ++i) {
      const Key key = current[i];
      current[kept] = key;  // kept <= i: nothing unread is overwritten
      kept += int(((key >> shift) & 0xff) == Key(digit));
    }
    count = kept;
  }
  return from_ordered_key<Compute>(current[0]);
}

}  // namespace prunekit::cpu
