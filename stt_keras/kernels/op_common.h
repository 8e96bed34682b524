// What the native STT ops (windowed_attention.cc and nsm_score.cc) share
// besides the SIMD helpers: TensorFlow's op framework under short names, error
// statuses and the rank checks of their shape functions.

#ifndef STT_KERAS_KERNELS_OP_COMMON_H_
#define STT_KERAS_KERNELS_OP_COMMON_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace stt_kernels {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// An InvalidArgument status whose message is the arguments' concatenation
// (absl's: tensorflow::errors::InvalidArgument is deprecated).
template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// Shape functions: input `index` must have `rank` (`layout` names its axes), so
// that a wrong rank fails when the graph is built, with the input's name.
inline absl::Status InputWithRank(InferenceContext* c, int index, int64_t rank, const char* name, const char* layout,
                                  ShapeHandle* out) {
  if (c->WithRank(c->input(index), rank, out).ok()) return absl::OkStatus();
  return InvalidArgument("input ", name, " must be ", layout, " (rank ", rank, "), got shape ",
                         c->DebugString(c->input(index)));
}

// Shape functions: two dimensions that must be equal, where the graph knows
// them; `what` says which (the kernel's own check says the same at run time).
inline absl::Status SameDim(InferenceContext* c, DimensionHandle a, DimensionHandle b, const char* what) {
  DimensionHandle merged;
  if (c->Merge(a, b, &merged).ok()) return absl::OkStatus();
  return InvalidArgument(what, " (got ", c->DebugString(a), " and ", c->DebugString(b), ")");
}

}  // namespace stt_kernels

#endif  // STT_KERAS_KERNELS_OP_COMMON_H_
