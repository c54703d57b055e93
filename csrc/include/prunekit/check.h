// Argument checks shared by every op's ATen glue. Each message names the op, the argument, what
// was expected and what was received; value problems raise ValueError, the rest RuntimeError.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <mutex>
#include <sstream>
#include <string>

namespace prunekit {

inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::ostringstream out;
  bool first = true;
  for (auto dtype : dtypes) {
    out << (first ? "" : ", ") << c10::toString(dtype);
    first = false;
  }
  return out.str();
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* arg,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto dtype : allowed) {
    if (t.scalar_type() == dtype) return;
  }
  TORCH_CHECK_VALUE(false, "prunekit.", op, ": argument '", arg, "' must have dtype ",
                    allowed.size() == 1 ? "" : "one of ", dtype_list(allowed), ", but got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, const char* op, const char* arg, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, "prunekit.", op, ": argument '", arg, "' must be ", dim, "-D, but got a ", t.dim(),
                    "-D tensor of shape ", t.sizes());
}

inline void check_min_dim(const at::Tensor& t, const char* op, const char* arg, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() >= dim, "prunekit.", op, ": argument '", arg, "' must have at least ", dim,
                    " dimension(s), but got a ", t.dim(), "-D tensor");
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK_VALUE(t.is_contiguous(), "prunekit.", op, ": argument '", arg,
                    "' must be contiguous (call .contiguous()), but got strides ", t.strides(), " for shape ",
                    t.sizes());
}

inline void check_nonempty(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK_VALUE(t.numel() > 0, "prunekit.", op, ": argument '", arg, "' must be non-empty, but got shape ",
                    t.sizes());
}

inline void check_multiple(int64_t value, int64_t multiple, const char* op, const char* what) {
  TORCH_CHECK_VALUE(value % multiple == 0, "prunekit.", op, ": ", what, " must be a multiple of ", multiple,
                    ", but got ", value);
}

inline void check_same_device(const at::Tensor& a, const char* a_arg, const at::Tensor& b, const char* b_arg,
                              const char* op) {
  TORCH_CHECK(a.device() == b.device(), "prunekit.", op, ": arguments '", a_arg, "' and '", b_arg,
              "' must be on the same device, but got ", a.device(), " and ", b.device());
}

// Whether every entry is finite. A finite sum proves it (one cheap reduction); only a non-finite
// sum, which finite entries reach only by overflow, needs the elementwise test.
inline bool all_finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  return t.sum().isfinite().item<bool>() || t.isfinite().all().item<bool>();
}

// The N:M arguments: 1 <= m, 0 <= n <= m, and the last dim divisible by m.
inline void check_nm(int64_t n, int64_t m, int64_t last_dim, const char* op) {
  TORCH_CHECK_VALUE(m >= 1, "prunekit.", op, ": argument 'm' must be >= 1, but got ", m);
  TORCH_CHECK_VALUE(n >= 0 && n <= m, "prunekit.", op, ": argument 'n' must be in [0, m=", m, "], but got ", n);
  TORCH_CHECK_VALUE(last_dim % m == 0, "prunekit.", op, ": the last dimension of 'scores' must be a multiple of m=", m,
                    ", but got ", last_dim);
}

// Keeps the error of the lowest row when kernels run over row ranges on several threads.
template <typename Status>
class FirstError {
 public:
  void record(const Status& status) {
    if (status.ok()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (first_.ok() || status.row < first_.row) first_ = status;
  }
  const Status& get() const { return first_; }

 private:
  std::mutex mutex_;
  Status first_{};
};

}  // namespace prunekit
