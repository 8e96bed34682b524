// Argument checks shared by the native STT ops (windowed_attention.cc and
// nsm_score.cc): error statuses and the rank checks of their shape functions.

#ifndef STT_KERAS_KERNELS_OP_CHECKS_H_
#define STT_KERAS_KERNELS_OP_CHECKS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace stt_kernels {

// An InvalidArgument status whose message is the arguments' concatenation
// (absl's: tensorflow::errors::InvalidArgument is deprecated).
template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// Shape functions: input `index` must have `rank` (`layout` names its axes), so
// that a wrong rank fails when the graph is built, with the input's name.
inline absl::Status InputWithRank(tensorflow::shape_inference::InferenceContext* c, int index, int64_t rank,
                                  const char* name, const char* layout,
                                  tensorflow::shape_inference::ShapeHandle* out) {
  if (c->WithRank(c->input(index), rank, out).ok()) return absl::OkStatus();
  return InvalidArgument("input ", name, " must be ", layout, " (rank ", rank, "), got shape ",
                         c->DebugString(c->input(index)));
}

}  // namespace stt_kernels

#endif  // STT_KERAS_KERNELS_OP_CHECKS_H_
