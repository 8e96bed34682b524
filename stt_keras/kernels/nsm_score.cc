// NSM score (docs/method.md, "Query selection") of every point of a feature map:
// for q = F[u, v] and its in-map neighbours Q_i within `radius` (q included),
//   s_i = <Q_i, q>,  score = logsumexp(s) - mean(s) - log(n_b) + mean(1 - cos(Q_i, q)).
// Points are taken 16 at a time along a map row; for each neighbour row and
// channel, each point's 16-lane window segment is one multiply-add against the
// transposed features (the row's lines stay in L1 for the 16 points).
//
// Inputs:  features float32 [B, h, w, d]
// Attrs:   radius (0..7: a window row fits in 16 lanes)
// Output:  float32 [B, h, w]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "op_common.h"
#include "simd.h"

namespace stt_kernels {
namespace {

REGISTER_OP("SttNsmScore")
    .Input("features: float")
    .Attr("radius: int >= 0")
    .Output("scores: float")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle features;
      TF_RETURN_IF_ERROR(InputWithRank(c, 0, 4, "features", "[B, h, w, d]", &features));
      c->set_output(0, c->MakeShape({c->Dim(features, 0), c->Dim(features, 1), c->Dim(features, 2)}));
      return absl::OkStatus();
    });

class SttNsmScoreOp : public OpKernel {
 public:
  explicit SttNsmScoreOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("radius", &radius_));
    OP_REQUIRES(context, radius_ <= 7, InvalidArgument("radius must be at most 7, got ", radius_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    OP_REQUIRES(context, features.dims() == 4, InvalidArgument("features must be [B, h, w, d], got ", features.shape().DebugString()));
    const int64_t batch = features.dim_size(0), h = features.dim_size(1), w = features.dim_size(2), d = features.dim_size(3);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, h, w}), &output));
    if (batch * h * w == 0) return;
    const float* f = features.flat<float>().data();
    float* out = output->flat<float>().data();
    auto* threads = context->device()->tensorflow_cpu_worker_threads();

    // Transposed features [B, h, d, w + 16] (x innermost, zero-padded) and norms [B, h, w + 16].
    const int64_t padded_w = w + kLanes;
    Tensor transposed, norms;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({batch * h * d * padded_w}), &transposed));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({batch * h * padded_w}), &norms));
    float* ft = transposed.flat<float>().data();
    float* norm = norms.flat<float>().data();
    auto prepare = [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {  // row = b * h + y
        const float* src = f + row * w * d;
        TransposeRow(src, d, d, w, padded_w, ft + row * d * padded_w);
        for (int64_t x = 0; x < w; ++x) {
          float sq = 0.f;
          for (int64_t c = 0; c < d; ++c) sq += src[x * d + c] * src[x * d + c];
          norm[row * padded_w + x] = std::sqrt(sq);
        }
        std::fill(norm + row * padded_w + w, norm + (row + 1) * padded_w, 1.f);  // padding lanes (masked out)
      }
    };
    tensorflow::Shard(threads->num_threads, threads->workers, batch * h, w * d * 4, prepare);

    const int64_t r = radius_;
    const int64_t groups_w = (w + kLanes - 1) / kLanes;
    auto work = [&](int64_t begin, int64_t end) {
      // dots[p][row k][lane]: point p's products with its window row k.
      std::vector<V16> dots(kLanes * (2 * r + 1));
      for (int64_t gidx = begin; gidx < end; ++gidx) {
        const int64_t b = gidx / (h * groups_w), u = (gidx / groups_w) % h, v0 = (gidx % groups_w) * kLanes;
        const int64_t points = std::min<int64_t>(kLanes, w - v0);
        const float* q_rows = ft + (b * h + u) * d * padded_w + v0;  // q_rows[c * padded_w + p]
        const int64_t y0 = std::max<int64_t>(0, u - r), y1 = std::min<int64_t>(h - 1, u + r);
        for (int64_t y = y0; y <= y1; ++y) {
          const float* rows = ft + (b * h + y) * d * padded_w;
          V16 acc[kLanes] = {};
          int64_t x0[kLanes];
          for (int64_t p = 0; p < kLanes; ++p) x0[p] = std::max<int64_t>(0, std::min(v0 + p, w - 1) - r);
          for (int64_t c = 0; c < d; ++c) {
            const float* line = rows + c * padded_w;
            const float* qc = q_rows + c * padded_w;
            for (int64_t p = 0; p < kLanes; ++p) acc[p] += qc[p] * Load16(line + x0[p]);
          }
          for (int64_t p = 0; p < kLanes; ++p) dots[p * (2 * r + 1) + (y - y0)] = acc[p];
        }
        V16 lane = {};
        for (int i = 0; i < kLanes; ++i) lane[i] = static_cast<float>(i);
        for (int64_t p = 0; p < points; ++p) {
          const int64_t v = v0 + p;
          const int64_t xa = std::max<int64_t>(0, v - r), xb = std::min<int64_t>(w - 1, v + r);
          const V16 valid = lane <= static_cast<float>(xb - xa) ? V16{} + 1.f : V16{};  // lanes in the map
          const float q_norm = norm[(b * h + u) * padded_w + v];
          V16 m = V16{} - 3.0e38f;
          for (int64_t y = y0; y <= y1; ++y) {
            const V16 row = dots[p * (2 * r + 1) + (y - y0)];
            const V16 masked = valid > 0.f ? row : V16{} - 3.0e38f;
            m = masked > m ? masked : m;
          }
          float top = m[0];
          for (int i = 1; i < kLanes; ++i) top = std::max(top, m[i]);
          V16 total = {}, sum = {}, cos_sum = {};
          for (int64_t y = y0; y <= y1; ++y) {
            const V16 row = dots[p * (2 * r + 1) + (y - y0)] * valid;
            const V16 other = Load16(norm + (b * h + y) * padded_w + xa) * q_norm;
            total += FastExp16(row - top) * valid;
            sum += row;
            cos_sum += row / (other > 1e-12f ? other : V16{} + 1e-12f);
          }
          float t = 0.f, s_ = 0.f, c_ = 0.f;
          for (int i = 0; i < kLanes; ++i) {
            t += total[i];
            s_ += sum[i];
            c_ += cos_sum[i];
          }
          const float n_b = static_cast<float>((y1 - y0 + 1) * (xb - xa + 1));
          out[(b * h + u) * w + v] = top + std::log(t) - s_ / n_b - std::log(n_b) + 1.f - c_ / n_b;
        }
      }
    };
    const int64_t cost = kLanes * (2 * r + 1) * d * kLanes;
    tensorflow::Shard(threads->num_threads, threads->workers, batch * h * groups_w, cost, work);
  }

 private:
  int radius_;
};

REGISTER_KERNEL_BUILDER(Name("SttNsmScore").Device(DEVICE_CPU), SttNsmScoreOp);

}  // namespace
}  // namespace stt_kernels
