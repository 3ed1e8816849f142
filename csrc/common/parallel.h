// at::parallel_for for bodies that call ATen ops.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdint>

namespace peftcore {

// The OpenMP workers of at::parallel_for do not inherit the caller's thread-local
// dispatch state: an op below autograd (our kernels) would see its ATen calls on
// tensors that require grad (weights, x) go through autograd again in the workers,
// and an out= call on them fail. Each chunk here runs with the caller's local
// dispatch key set.
template <typename Body>
void parallel_for_below_autograd(int64_t begin, int64_t end, int64_t grain, const Body& body) {
  const c10::impl::LocalDispatchKeySet keys = c10::impl::tls_local_dispatch_key_set();
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    const c10::impl::ForceDispatchKeyGuard same_keys(keys);
    body(b, e);
  });
}

}  // namespace peftcore
