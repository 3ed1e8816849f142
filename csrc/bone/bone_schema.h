// The MiSS ops as C++ sees them: their names and signatures, shared by the autograd
// and autocast kernels (the schema strings are in bone_schema.cpp). "bone" in an op
// name is the MiSS family (HF PEFT's MiSS, formerly Bone): bone_linear serves its
// bone and mini forms, bone_bat_* its bat form.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace peftcore {

using BoneGrads4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline constexpr char kBoneLinear[] = "peftcore::bone_linear";
using BoneLinearSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                         const std::optional<at::Tensor>&, const at::Tensor&, int64_t);

inline constexpr char kBoneLinearBackward[] = "peftcore::bone_linear_backward";
using BoneLinearBackwardSig = BoneGrads4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t, std::array<bool, 4>);

inline constexpr char kBoneBatLinear[] = "peftcore::bone_bat_linear";
using BoneBatLinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                    const at::Tensor&);

inline constexpr char kBoneBatLinearBackward[] = "peftcore::bone_bat_linear_backward";
using BoneBatLinearBackwardSig = BoneGrads4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            std::array<bool, 4>, int64_t);

// bone_bat_linear_backward's band_elements default (the schema's), which autograd uses.
inline constexpr int64_t kBatBandElements = int64_t{1} << 24;

}  // namespace peftcore
