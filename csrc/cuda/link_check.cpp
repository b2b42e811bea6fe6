// Host program used by check.sh: takes the address of every launcher instantiation the torch
// bindings use and links against the compiled kernels, so a declaration that does not match
// an explicit instantiation fails at link time on a machine without a GPU. Never launches.
#include <cstdio>

#include "msca_cuda.h"
#include "spade_cuda.h"

namespace {

template <typename T, typename A>
int touch() {
  auto f = &msca_cuda::msca_fwd<T, A>;
  auto b = &msca_cuda::msca_bwd<T, A>;
  auto sf = &msca_cuda::spade_fwd<T, A>;
  auto sb = &msca_cuda::spade_bwd<T, A>;
  return (f != nullptr) + (b != nullptr) + (sf != nullptr) + (sb != nullptr);
}

}  // namespace

int main() {
  const int n = touch<float, float>() + touch<double, double>() + touch<__half, float>() +
                touch<__nv_bfloat16, float>();
  const msca_cuda::MscaDims d{2, 64, 64, 64, 16, 4096, 4096};
  const size_t ws = msca_cuda::msca_fwd_workspace_bytes(d, 132, 4) +
                    msca_cuda::msca_bwd_workspace_bytes(d, 132, 4) +
                    msca_cuda::spade_workspace_bytes(msca_cuda::SpadeDims{2, 64, 4096, false}, 4);
  std::printf("link check: %d launchers, workspace example %zu bytes\n", n, ws);
  return n == 16 ? 0 : 1;
}
