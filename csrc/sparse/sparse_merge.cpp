#include "sparse/sparse_merge.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/segment_reduce.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/unique_consecutive.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "sparse/sparse_checks.h"

namespace peftcore {
namespace {

// Several host int64 lists on `device` in one copy (each copy from pageable memory
// waits for the stream), returned as slices in the order given.
std::vector<at::Tensor> upload_longs(std::initializer_list<const std::vector<int64_t>*> lists,
                                     const at::Device& device) {
  std::vector<int64_t> all;
  for (const auto* l : lists) all.insert(all.end(), l->begin(), l->end());
  const at::Tensor flat = at::tensor(all, at::TensorOptions().dtype(at::kLong)).to(device, /*non_blocking=*/false);
  std::vector<at::Tensor> out;
  int64_t pos = 0;
  for (const auto* l : lists) {
    out.push_back(flat.narrow(0, pos, static_cast<int64_t>(l->size())));
    pos += static_cast<int64_t>(l->size());
  }
  return out;
}

// The slow, exact diagnosis once the batched check has failed: which list, and why.
[[noreturn]] void report_bad_list(const char* op, at::TensorList params, at::TensorList indices,
                                  const std::vector<std::vector<int64_t>>& parts) {
  for (size_t i = 0; i < parts.size(); ++i) {
    for (int64_t j : parts[i]) {
      const at::Tensor& idx = indices[j];
      if (idx.numel() == 0) continue;
      TORCH_CHECK(idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < params[i].numel(), op,
                  ": indices[", j, "] holds values out of range for a parameter of ", params[i].numel(),
                  " elements");
      TORCH_CHECK(idx.numel() < 2 || idx.narrow(0, 1, idx.numel() - 1).gt(idx.narrow(0, 0, idx.numel() - 1))
                                         .all().item<bool>(),
                  op, ": indices[", j, "] must be strictly increasing");
    }
  }
  TORCH_INTERNAL_ASSERT(false, op, ": batched index check failed but no list is bad");
}

}  // namespace

MergedDeltas merge_sparse_parts(const char* op, at::TensorList params, at::TensorList indices, at::TensorList values,
                                at::ArrayRef<double> weights,
                                const std::vector<std::vector<int64_t>>& parts) {
  MergedDeltas out;
  out.acc = at::kFloat;
  for (const at::Tensor& p : params) {
    if (p.scalar_type() == at::kDouble) out.acc = at::kDouble;
  }
  const size_t n = params.size();
  out.key_offsets.assign(n + 1, 0);
  out.bounds.assign(n + 1, 0);

  // Every part's indices shifted into one key space, concatenated in parameter then
  // part order. Batched: one cat, one offset add and one weight multiply for all
  // parts, not a few launches per part.
  std::vector<at::Tensor> keys, vals;
  std::vector<int64_t> first_pos, last_pos, lo, hi, boundaries, part_offset, part_len;
  std::vector<double> part_weight;
  bool shifted = false, weighted = false;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    out.key_offsets[i + 1] = out.key_offsets[i] + params[i].numel();
    for (int64_t j : parts[i]) {
      const int64_t len = indices[j].numel();
      if (len == 0) continue;
      keys.push_back(indices[j]);
      vals.push_back(values[j]);
      part_offset.push_back(out.key_offsets[i]);
      part_len.push_back(len);
      part_weight.push_back(weights[j]);
      shifted = shifted || out.key_offsets[i] != 0;
      weighted = weighted || weights[j] != 1.0;
      first_pos.push_back(total);
      last_pos.push_back(total + len - 1);
      lo.push_back(out.key_offsets[i]);
      hi.push_back(out.key_offsets[i] + params[i].numel() - 1);
      if (total > 0) boundaries.push_back(total - 1);  // pair (total-1, total) crosses lists
      total += len;
    }
  }
  if (total == 0) {
    const at::TensorOptions opts = n ? params[0].options() : at::TensorOptions();
    out.keys = at::empty({0}, opts.dtype(at::kLong));
    out.sums = at::empty({0}, opts.dtype(out.acc));
    return out;
  }
  const at::Device device = keys.front().device();
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(params[i].device() == params[0].device(), op, ": all parameters must be on one "
                "device here, got params[0] on ", params[0].device(), " and params[", i, "] on ",
                params[i].device());
  }
  // Every list the device needs, in one upload.
  const std::vector<at::Tensor> dev = upload_longs(
      {&part_len, &part_offset, &first_pos, &lo, &last_pos, &hi, &boundaries, &out.key_offsets}, device);
  const at::Tensor &lengths = dev[0], &offsets_dev = dev[1], &first_dev = dev[2], &lo_dev = dev[3],
                   &last_dev = dev[4], &hi_dev = dev[5], &boundaries_dev = dev[6], &key_offsets_dev = dev[7];
  at::Tensor key = at::cat(keys);
  if (shifted) {
    key.add_(at::repeat_interleave(offsets_dev, lengths, 0, total));
  }
  at::Tensor val = at::cat(vals).to(out.acc);
  if (weighted) {
    const at::Tensor w = at::tensor(part_weight, at::TensorOptions().dtype(at::kDouble)).to(device, out.acc);
    val.mul_(at::repeat_interleave(w, lengths, 0, total));
  }

  // Validation, batched: strictly increasing inside each list (pairs that cross two
  // lists are exempt) and, given that, each list's first and last key inside its
  // parameter's range. One host read.
  at::Tensor ok = key.index_select(0, first_dev).ge(lo_dev).all();
  ok = ok.logical_and(key.index_select(0, last_dev).le(hi_dev).all());
  if (total > 1) {
    at::Tensor increasing = key.narrow(0, 1, total - 1).gt(key.narrow(0, 0, total - 1));
    if (!boundaries.empty()) increasing.index_fill_(0, boundaries_dev, true);
    ok = ok.logical_and(increasing.all());
  }
  if (!ok.item<bool>()) report_bad_list(op, params, indices, parts);

  // Union and sums: a stable sort keeps equal keys in part order, so the segment
  // sums add the parts in a fixed order (deterministic).
  const auto [sorted, perm] = at::sort(key, /*stable=*/true, 0, false);
  const auto [uniq, inverse, counts] = at::unique_consecutive(sorted, false, true);
  out.keys = uniq;
  // unsafe: the counts are known positive, and checking them would read them back.
  out.sums = at::segment_reduce(val.index_select(0, perm), "sum", counts, std::nullopt, std::nullopt, 0,
                                /*unsafe=*/true);
  const at::Tensor bounds = at::searchsorted(uniq, key_offsets_dev).to(at::kCPU);
  const int64_t* b = bounds.const_data_ptr<int64_t>();
  out.bounds.assign(b, b + n + 1);
  return out;
}

namespace {

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> sparse_merge_op(
    at::TensorList params, at::TensorList indices, at::TensorList values, at::IntArrayRef owner,
    at::ArrayRef<double> weights) {
  const auto parts = check_sparse_compose(params, indices, values, owner, weights, "sparse_merge");
  const MergedDeltas merged = merge_sparse_parts("sparse_merge", params, indices, values, weights, parts);
  std::vector<at::Tensor> local(params.size()), sums(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t start = merged.bounds[i], count = merged.bounds[i + 1] - start;
    // Own storage per parameter, not slices of the whole.
    local[i] = merged.keys.narrow(0, start, count).sub(merged.key_offsets[i]);
    sums[i] = merged.sums.narrow(0, start, count).clone();
  }
  return {local, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CompositeExplicitAutograd, m) {
  m.impl("sparse_merge", &sparse_merge_op);
}

}  // namespace peftcore
