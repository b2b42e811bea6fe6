// A small cache of big output buffers for the CPU kernels (output_pool.cpp says why).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace msca_cpu {

// An empty tensor like at::empty(sizes, opts) for a big kernel output. Buffers of at least
// 4 MiB come from the pool of recently freed output buffers (or are freshly mapped, with
// transparent huge pages requested); smaller ones, and all of them when the pool is disabled
// (MSCA_CPU_POOL_MB=0), come from at::empty. The tensor is an ordinary, resizable CPU tensor.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

// Hands every cached (free) buffer back to the operating system; returns the bytes released.
int64_t pool_release();

// Bytes held in free cached buffers now, and the limit on them.
int64_t pool_cached_bytes();
int64_t pool_limit_bytes();

}  // namespace msca_cpu
