// The sparse fine-tuning ops: schemas. Kernels: sparse_cpu.cpp, sparse_cuda.cu,
// sparse_merge.cpp, magnitude_topk_cpu.cpp; fakes: python/peftcore/ops/sparse.py;
// the API that calls them: python/peftcore/sparse/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(peftcore, m) {
  // Composable sparse fine-tuning, for many parameters in one call: entry j adds
  // weights[j] * values[j] at the sorted, unique flat (row-major) indices[j] of
  // params[owner[j]]. Each parameter gets one merged pass; the union of its indices
  // and the original values there are returned, so that sparse_revert_ restores
  // the exact original bits.
  m.def(
      "sparse_compose_(Tensor(a!)[] params, Tensor[] indices, Tensor[] values, int[] owner, "
      "float[] weights) -> (Tensor[] indices, Tensor[] originals)");
  m.def("sparse_revert_(Tensor(a!)[] params, Tensor[] indices, Tensor[] originals) -> ()");
  // The same union and weighted sums without touching the parameters (params are
  // read for shapes only): several deltas combined into one, on any device.
  m.def(
      "sparse_merge(Tensor[] params, Tensor[] indices, Tensor[] values, int[] owner, "
      "float[] weights) -> (Tensor[] indices, Tensor[] values)");
  // LT-SFT mask selection: per pair, the sorted flat indices of the k largest
  // |float(theta) - float(theta0)| over all pairs; ties at the k-th value are taken
  // in pair order, then flat index order. Non-finite differences raise ValueError.
  // CPU kernel only: on a GPU, sparse.select uses chunked torch.topk instead.
  m.def("magnitude_topk(Tensor[] theta0, Tensor[] theta, int k) -> Tensor[]");
}
