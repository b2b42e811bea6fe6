// Big outputs of the CPU kernels (out; dfx2, dfc2, dfc1; the SPADE dx, dgamma) come from a
// small cache of recently freed buffers instead of a fresh allocation every call.
//
// Why: torch's CPU allocator hands a 64 MB block to glibc, which serves it straight from mmap
// and unmaps it again on free. The next call's first write to every page then faults and the
// kernel zeroes the page: at the benchmark size that is 256 MB of fresh pages per
// forward+backward, measured at 25-35 ms on the 2-core test machine, a third of the fused
// kernels' whole time. (Transparent huge pages cut the number of faults but not the zeroing,
// and are often refused on a fragmented machine.) A training or inference loop calls the op
// with the same shapes every step, so the buffers freed by step i fit step i+1 exactly. This is
// what the CUDA caching allocator does on the GPU.
//
// Policy: buffers of at least kMinBytes, sizes rounded up to whole 2 MiB huge pages, reused
// only for requests of the same rounded size up to 1/8 smaller (so a cached buffer never
// wastes much); free buffers kept up to MSCA_CPU_POOL_MB megabytes (read at the first big
// allocation; default 1024, 0 disables the pool), beyond which a freed buffer goes straight back
// to the system.
// torch.ops.msca_kernels.cpu_pool_release() (msca_kernels.empty_cache()) empties the cache.
// The tensors are ordinary CPU tensors whose storage uses this allocator (resizable, freed
// through it); the pool never hands out a buffer that is still referenced.
#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace msca_cpu {
namespace {

constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kMinBytes = size_t(4) << 20;

size_t limit_from_env() {
  const char* s = std::getenv("MSCA_CPU_POOL_MB");
  if (s == nullptr || *s == '\0') return size_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(s, &end, 10);
  TORCH_CHECK(end != s && *end == '\0' && mb >= 0,
              "MSCA_CPU_POOL_MB: expected a whole number of megabytes >= 0, got '", s, "'");
  return static_cast<size_t>(mb) << 20;
}

// Transparent huge pages for the 2 MiB-aligned interior of [p, p + bytes), before the first
// write: a 64 MB output then faults 32 times instead of 16384. Only a hint: no effect where THP
// is off or on pages already touched.
void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (a + kHuge - 1) & ~(uintptr_t(kHuge) - 1);
  const uintptr_t hi = (a + bytes) & ~(uintptr_t(kHuge) - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

void* map_fresh(size_t bytes) {
  void* p = std::aligned_alloc(kHuge, bytes);  // bytes is a multiple of kHuge
  if (p == nullptr) throw std::bad_alloc();
  advise_huge_pages(p, bytes);
  return p;
}

class OutputPool final : public c10::Allocator {
 public:
  OutputPool() : limit_(limit_from_env()) {}

  bool enabled() const { return limit_ > 0; }
  size_t limit() const { return limit_; }

  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = ((std::max<size_t>(n, 1) + kHuge - 1) / kHuge) * kHuge;
    void* p = take(bytes);
    if (p == nullptr) p = map_fresh(bytes);
    {
      std::lock_guard<std::mutex> g(mu_);
      live_[p] = bytes;
    }
    return {p, p, &OutputPool::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &OutputPool::deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t release() {
    std::multimap<size_t, void*> drop;
    {
      std::lock_guard<std::mutex> g(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    size_t total = 0;
    for (auto& [bytes, p] : drop) {
      std::free(p);
      total += bytes;
    }
    return total;
  }

  size_t cached() {
    std::lock_guard<std::mutex> g(mu_);
    return cached_;
  }

  static OutputPool& get() {
    // Never destroyed: tensors may be freed after static destructors have run at exit.
    static OutputPool* pool = new OutputPool();
    return *pool;
  }

 private:
  // A cached buffer of at least `bytes` and at most 1/8 more, or null.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 8) return nullptr;
    void* p = it->second;
    cached_ -= it->first;
    free_.erase(it);
    return p;
  }

  void give_back(void* p) {
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = live_.find(p);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "msca output pool: unknown buffer freed");
      bytes = it->second;
      live_.erase(it);
      if (cached_ + bytes <= limit_) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  static void deleter(void* p) { get().give_back(p); }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;     // rounded size -> free buffer
  std::unordered_map<void*, size_t> live_;  // buffer in use -> rounded size
  size_t cached_ = 0;
  const size_t limit_;
};

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  OutputPool& pool = OutputPool::get();
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(opts.dtype().toScalarType());
  if (bytes < kMinBytes || !opts.device().is_cpu()) return at::empty(sizes, opts);
  if (!pool.enabled()) {
    at::Tensor t = at::empty(sizes, opts);
    advise_huge_pages(t.data_ptr(), bytes);
    return t;
  }
  return at::Tensor(at::detail::empty_generic(sizes, &pool,
                                              c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              opts.dtype().toScalarType(), std::nullopt));
}

int64_t pool_release() { return static_cast<int64_t>(OutputPool::get().release()); }
int64_t pool_cached_bytes() { return static_cast<int64_t>(OutputPool::get().cached()); }
int64_t pool_limit_bytes() { return static_cast<int64_t>(OutputPool::get().limit()); }

}  // namespace msca_cpu

TORCH_LIBRARY_FRAGMENT(msca_kernels, m) {
  // Host-side control of the CPU output pool (no tensors, so no dispatch key: one kernel).
  m.def("cpu_pool_release() -> int", &msca_cpu::pool_release);
  m.def("cpu_pool_cached_bytes() -> int", &msca_cpu::pool_cached_bytes);
  m.def("cpu_pool_limit_bytes() -> int", &msca_cpu::pool_limit_bytes);
}
