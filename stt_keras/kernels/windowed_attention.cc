// Windowed temporal attention of the selected queries only: the STT's sparse
// attention as one fused CPU kernel (stt_keras/kernels/__init__.py builds it).
//
// For query n of batch b at flat position p = u * w + v, and each head, the
// keys are the (2 l_t + 1)^2 points around (u, v) in every key frame t, clipped
// to the map (a point outside the map is not a key: it gets no weight). Scores,
// softmax and the weighted sum of values happen per query in registers and a
// small stack buffer: no score tensor is ever written to memory, and only the
// N_q selected queries are computed (the pure-TF path has to score whole tiles
// against their halos, selected or not, because XLA needs static shapes).
//
// Inputs:  queries     float32 [B, N, d_r]   projected by W^Q and scaled
//          positions   int32   [B, N]        flat positions in [0, h * w)
//          key_values  float32 [B, T, h, w, 2 d_r]  keys, then values
// Attrs:   radii (T ints, farthest frame first), num_heads
// Output:  float32 [B, N, d_r], heads concatenated as in the TF path.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

constexpr int64_t kPrefetch = 8;  // value rows fetched ahead in the weighted sum
constexpr int64_t kLanes = 16;    // scores computed per multiply-add run along a window row

struct Geometry {
  int64_t h, w, frames, padded_w, d_r, d_head;
  int heads;
  int64_t max_keys;
};

// GCC/Clang vector extensions: explicit SIMD that compiles to AVX-512/AVX2 on
// x86 and NEON on ARM (Jetson) alike, so the hot loops do not depend on the
// auto-vectoriser's choices (it vectorised the value sum across keys, with
// permutes, and left the max scalar).
using V16 = float __attribute__((vector_size(64)));
using V8 = float __attribute__((vector_size(32)));
using I16 = int32_t __attribute__((vector_size(64)));

// A vector of N floats (vector_size cannot depend on a template parameter).
template <int N>
struct VecOf;
template <>
struct VecOf<8> {
  using type = V8;
};
template <>
struct VecOf<16> {
  using type = V16;
};
template <>
struct VecOf<32> {
  using type = float __attribute__((vector_size(128)));
};

inline V16 Load16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store16(float* p, V16 v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) on 16 lanes, for x <= 0 (softmax arguments after subtracting the max):
// 2^(x log2 e) split into an integer power, built in the exponent bits, and a
// degree-6 polynomial of the fraction. std::exp is a
// scalar libm call and was most of this kernel's time.
inline V16 FastExp16(V16 x) {
  const V16 lo = V16{} - 87.f;
  x = x < lo ? lo : x;
  const V16 t = x * 1.44269504088896341f;
  I16 ti = __builtin_convertvector(t, I16);  // truncates toward zero
  V16 fi = __builtin_convertvector(ti, V16);
  const I16 above = fi > t;                  // t < 0 not integral: floor = trunc - 1
  ti = ti + above;                           // (true lanes are -1)
  fi = __builtin_convertvector(ti, V16);
  const V16 f = t - fi;
  // Least-squares fit of 2^f on [0, 1] in relative error, p(0) = 1: 5e-9 in
  // exact arithmetic; with float32 rounding of x * log2(e), about 1e-6 overall.
  V16 p = V16{} + 2.154066972433887e-4f;
  p = p * f + 1.248284004079594e-3f;
  p = p * f + 9.674549891507241e-3f;
  p = p * f + 5.548532072372258e-2f;
  p = p * f + 2.402294005208627e-1f;
  p = p * f + 6.931470281767104e-1f;
  p = p * f + 1.f;
  const I16 bits = (ti + 127) << 23;
  V16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// One map row of a [w, src_stride] channels-last block, first `channels`
// channels, written transposed to dst [channels, padded_w] (x innermost, the
// padding zeroed). 16 points at a time: their 16 source lines (1-2 KB apart,
// which would thrash a few L1 sets if all w were walked per channel) stay in L1.
inline void TransposeRow(const float* src, int64_t src_stride, int64_t channels, int64_t w, int64_t padded_w,
                         float* dst) {
  for (int64_t x0 = 0; x0 < w; x0 += kLanes) {
    const int64_t xn = std::min<int64_t>(kLanes, w - x0);
    for (int64_t c = 0; c < channels; ++c) {
      float* line = dst + c * padded_w + x0;
      for (int64_t x = 0; x < xn; ++x) line[x] = src[(x0 + x) * src_stride + c];
    }
  }
  for (int64_t c = 0; c < channels; ++c) std::fill(dst + c * padded_w + w, dst + (c + 1) * padded_w, 0.f);
}

struct Query {
  const float* q;  // [d_r], projected and scaled
  float* out;      // [d_r]
  int64_t u, v;    // position in the map
};

struct Scratch {
  Scratch(const Geometry& g, int64_t group)
      : stride(g.max_keys + kLanes),
        scores(group * g.heads * stride),
        values(group * g.max_keys),
        counts(group),
        sums(g.heads),
        acc(g.d_r) {}
  int64_t stride;
  std::vector<float> scores;         // [group, heads, stride]: per query and head, its keys' scores
  std::vector<const float*> values;  // [group, max_keys]: value row of each key, in score order
  std::vector<int64_t> counts;       // keys of each query so far
  std::vector<float> sums, acc;
};

// Scores of one query against the keys of one window row (as many as VecT has
// lanes) that start at `base` (transposed layout), written to dst[j * stride + i].
template <int kHeads, int kDHead, typename VecT>
inline void ScoreRow(const Geometry& g, const float* __restrict q, const float* __restrict base,
                     float* __restrict dst, int64_t stride) {
  constexpr int kWidth = sizeof(VecT) / sizeof(float);
  if constexpr (kHeads > 0) {
    // Head count and width known at compile time: the accumulators live in
    // registers and the loads of key lines overlap (memory-carried
    // accumulators serialised them and cost 3x).
    VecT s[kHeads] = {};
    for (int64_t c = 0; c < kDHead; ++c) {
      for (int j = 0; j < kHeads; ++j) {
        VecT line;
        std::memcpy(&line, base + (j * kDHead + c) * g.padded_w, sizeof(line));
        s[j] += q[j * kDHead + c] * line;
      }
    }
    for (int j = 0; j < kHeads; ++j) std::memcpy(dst + j * stride, &s[j], sizeof(VecT));
  } else {
    for (int j = 0; j < g.heads; ++j) {
      float s[kWidth] = {};
      for (int64_t c = 0; c < g.d_head; ++c) {
        const float qc = q[j * g.d_head + c];
        const float* line = base + (j * g.d_head + c) * g.padded_w;
        for (int i = 0; i < kWidth; ++i) s[i] += qc * line[i];
      }
      for (int i = 0; i < kWidth; ++i) dst[j * stride + i] = s[i];
    }
  }
}

// Softmax of one query's scores per head and the weighted sum of its values.
// `scores` rows have kLanes floats of slack past `count`.
template <int kHeads, int kDHead>
inline void WeighValues(const Geometry& g, float* __restrict scores, const float* const* values, int64_t count,
                        int64_t stride, float* __restrict out, Scratch* scratch) {
  const int heads = kHeads ? kHeads : g.heads;
  const int64_t dh = kDHead ? kDHead : g.d_head;
  float* sums = scratch->sums.data();
  const int64_t blocks = (count + kLanes - 1) / kLanes;
  for (int j = 0; j < heads; ++j) {  // normalised after the weighted sum
    float* s = scores + j * stride;
    for (int64_t k = count; k < blocks * kLanes; ++k) s[k] = -3.0e38f;  // slack lanes: weight 0
    V16 m = Load16(s);
    for (int64_t b = 1; b < blocks; ++b) {
      const V16 x = Load16(s + b * kLanes);
      m = x > m ? x : m;
    }
    float top = m[0];
    for (int i = 1; i < kLanes; ++i) top = std::max(top, m[i]);
    V16 total = {};
    for (int64_t b = 0; b < blocks; ++b) {
      const V16 e = FastExp16(Load16(s + b * kLanes) - top);
      Store16(s + b * kLanes, e);
      total += e;
    }
    float sum = 0.f;
    for (int i = 0; i < kLanes; ++i) sum += total[i];
    sums[j] = sum;
  }
  if constexpr (kHeads > 0) {
    using VH = typename VecOf<kDHead>::type;
    VH acc[kHeads] = {};
    for (int64_t k = 0; k < count; ++k) {
      const float* __restrict value = values[k];
      if (k + kPrefetch < count) {  // the value rows are scattered: fetch ahead
        const char* next = reinterpret_cast<const char*>(values[k + kPrefetch]);
        for (int64_t b = 0; b < kHeads * kDHead * 4; b += 64) __builtin_prefetch(next + b);
      }
      for (int j = 0; j < kHeads; ++j) {
        VH v;
        std::memcpy(&v, value + j * kDHead, sizeof(v));
        acc[j] += scores[j * stride + k] * v;
      }
    }
    for (int j = 0; j < kHeads; ++j) {
      const VH r = acc[j] * (1.f / sums[j]);
      std::memcpy(out + j * kDHead, &r, sizeof(r));
    }
  } else {
    float* __restrict acc = scratch->acc.data();
    std::fill(acc, acc + g.d_r, 0.f);
    for (int64_t k = 0; k < count; ++k) {
      const float* __restrict value = values[k];
      for (int j = 0; j < heads; ++j) {
        const float weight = scores[j * stride + k];
        for (int64_t c = 0; c < dh; ++c) acc[j * dh + c] += weight * value[j * dh + c];
      }
    }
    for (int j = 0; j < heads; ++j) {
      const float inv = 1.f / sums[j];
      for (int64_t c = 0; c < dh; ++c) out[j * dh + c] = acc[j * dh + c] * inv;
    }
  }
}

// A group of queries from one small tile of the map. Their windows overlap, so
// pass 1 walks the union of their window rows once and scores every query that
// the row belongs to while the row's key lines are in L1; then each query's
// softmax and weighted values (its value rows still in L2 from its neighbours).
// One query at a time streamed every key line from L3 and was 2x slower.
template <int kHeads, int kDHead>
void AttendGroup(const Geometry& g, const std::vector<int>& radii, const Query* group, int64_t size,
                 const float* __restrict kt, const float* __restrict kv, Scratch* scratch) {
  const int64_t stride = scratch->stride;
  const int64_t per_query = g.heads * stride;
  std::fill(scratch->counts.begin(), scratch->counts.begin() + size, 0);
  int64_t u_min = group[0].u, u_max = group[0].u;
  for (int64_t i = 1; i < size; ++i) {
    u_min = std::min(u_min, group[i].u);
    u_max = std::max(u_max, group[i].u);
  }
  for (int64_t t = 0; t < g.frames; ++t) {
    const int64_t l = radii[t];
    const int64_t y_lo = std::max<int64_t>(0, u_min - l), y_hi = std::min<int64_t>(g.h - 1, u_max + l);
    for (int64_t y = y_lo; y <= y_hi; ++y) {
      const int64_t row = t * g.h + y;
      for (int64_t i = 0; i < size; ++i) {
        const Query& query = group[i];
        if (y < query.u - l || y > query.u + l) continue;
        const int64_t x0 = std::max<int64_t>(0, query.v - l), x1 = std::min<int64_t>(g.w - 1, query.v + l);
        const int64_t width = x1 - x0 + 1;
        int64_t& count = scratch->counts[i];
        float* scores = scratch->scores.data() + i * per_query;
        const float** values = scratch->values.data() + i * g.max_keys;
        for (int64_t xs = 0; xs < width; xs += kLanes) {
          // Lanes past the row's end are scored too and overwritten by the next row.
          const float* base = kt + row * g.d_r * g.padded_w + x0 + xs;
          if (width - xs <= 8) {  // narrow windows (radius <= 3): half the lanes, half the work
            ScoreRow<kHeads, kDHead, V8>(g, query.q, base, scores + count + xs, stride);
          } else {
            ScoreRow<kHeads, kDHead, V16>(g, query.q, base, scores + count + xs, stride);
          }
        }
        const float* value_row = kv + (row * g.w + x0) * 2 * g.d_r + g.d_r;
        for (int64_t x = 0; x < width; ++x) values[count + x] = value_row + x * 2 * g.d_r;
        count += width;
      }
    }
  }
  for (int64_t i = 0; i < size; ++i) {
    WeighValues<kHeads, kDHead>(g, scratch->scores.data() + i * per_query, scratch->values.data() + i * g.max_keys,
                                scratch->counts[i], stride, group[i].out, scratch);
  }
}

REGISTER_OP("SttWindowedAttention")
    .Input("queries: float")
    .Input("positions: int32")
    .Input("key_values: float")
    .Attr("radii: list(int) >= 1")
    .Attr("num_heads: int >= 1")
    .Output("output: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return Status();
    });

class SttWindowedAttentionOp : public OpKernel {
 public:
  explicit SttWindowedAttentionOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("radii", &radii_));
    OP_REQUIRES_OK(context, context->GetAttr("num_heads", &num_heads_));
    for (int r : radii_) OP_REQUIRES(context, r >= 0, InvalidArgument("radii must be >= 0"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& queries = context->input(0);
    const Tensor& positions = context->input(1);
    const Tensor& key_values = context->input(2);
    OP_REQUIRES(context, queries.dims() == 3, InvalidArgument("queries must be [B, N, d_r], got ", queries.shape().DebugString()));
    OP_REQUIRES(context, positions.dims() == 2, InvalidArgument("positions must be [B, N]"));
    OP_REQUIRES(context, key_values.dims() == 5, InvalidArgument("key_values must be [B, T, h, w, 2 d_r]"));
    const int64_t batch = queries.dim_size(0), n = queries.dim_size(1), d_r = queries.dim_size(2);
    const int64_t frames = key_values.dim_size(1), h = key_values.dim_size(2), w = key_values.dim_size(3);
    OP_REQUIRES(context, positions.dim_size(0) == batch && positions.dim_size(1) == n,
                InvalidArgument("positions must be [B, N] like queries"));
    OP_REQUIRES(context, key_values.dim_size(0) == batch && key_values.dim_size(4) == 2 * d_r,
                InvalidArgument("key_values must be [B, T, h, w, 2 d_r] with the queries' B and d_r"));
    OP_REQUIRES(context, frames == static_cast<int64_t>(radii_.size()),
                InvalidArgument("key_values has ", frames, " frames but radii has ", radii_.size()));
    OP_REQUIRES(context, d_r % num_heads_ == 0, InvalidArgument("d_r must be divisible by num_heads"));

    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, queries.shape(), &output));
    if (batch * n == 0) return;

    const float* q_data = queries.flat<float>().data();
    const int32_t* p_data = positions.flat<int32_t>().data();
    const float* kv_data = key_values.flat<float>().data();
    float* out_data = output->flat<float>().data();
    const int64_t points = h * w;
    for (int64_t i = 0; i < batch * n; ++i) {
      OP_REQUIRES(context, p_data[i] >= 0 && p_data[i] < points,
                  InvalidArgument("position ", p_data[i], " is outside the ", h, "x", w, " map"));
    }

    // Group the queries by small tiles of the map (raster order of tiles), so
    // that a group's windows overlap and its keys are read once per group.
    constexpr int64_t kTile = 4;
    const int64_t tiles_h = (h + kTile - 1) / kTile, tiles_w = (w + kTile - 1) / kTile;
    std::vector<std::pair<int64_t, int64_t>> keyed(batch * n);  // (tile id, item)
    for (int64_t i = 0; i < batch * n; ++i) {
      const int64_t u = p_data[i] / w, v = p_data[i] % w;
      keyed[i] = {((i / n) * tiles_h + u / kTile) * tiles_w + v / kTile, i};
    }
    std::sort(keyed.begin(), keyed.end());
    std::vector<Query> queries_sorted(batch * n);
    std::vector<int64_t> group_start;
    for (int64_t o = 0; o < batch * n; ++o) {
      const int64_t item = keyed[o].second;
      queries_sorted[o] = {q_data + item * d_r, out_data + item * d_r, p_data[item] / w, p_data[item] % w};
      if (o == 0 || keyed[o].first != keyed[o - 1].first) group_start.push_back(o);
    }
    group_start.push_back(batch * n);
    const int64_t groups = static_cast<int64_t>(group_start.size()) - 1;

    int64_t max_keys = 0;
    for (int r : radii_) max_keys += (2 * r + 1) * (2 * r + 1);
    const int heads = num_heads_;
    const int64_t d_head = d_r / heads;
    auto* threads = context->device()->tensorflow_cpu_worker_threads();

    // Keys transposed to [B, T, h, d_r, w + kLanes] (x innermost, zero-padded):
    // the scores of one head against a window row are then kLanes-wide
    // multiply-adds over contiguous x, instead of one horizontal d_head-long dot
    // product per key (measured 2x slower).
    const int64_t padded_w = w + kLanes;
    Tensor transposed;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT,
                                                   TensorShape({batch * frames * h * d_r * padded_w}), &transposed));
    float* kt_data = transposed.flat<float>().data();
    auto transpose_rows = [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {  // row = (b * T + t) * h + y
        TransposeRow(kv_data + row * w * 2 * d_r, 2 * d_r, d_r, w, padded_w, kt_data + row * d_r * padded_w);
      }
    };
    tensorflow::Shard(threads->num_threads, threads->workers, batch * frames * h, w * d_r * 4, transpose_rows);

    const Geometry g{h, w, frames, padded_w, d_r, d_head, heads, max_keys};
    auto work = [&](int64_t begin, int64_t end) {
      Scratch scratch(g, kTile * kTile);
      for (int64_t i = begin; i < end; ++i) {
        const Query* group = queries_sorted.data() + group_start[i];
        const int64_t size = group_start[i + 1] - group_start[i];
        const int64_t b = (group[0].q - q_data) / (n * d_r);
        const float* kt = kt_data + b * frames * h * d_r * padded_w;
        const float* kv = kv_data + b * frames * points * 2 * d_r;
        // Compile-time head shapes of the presets (8 x 16 paper, 4 x 8 tiny, ...).
        if (heads == 8 && d_head == 16) AttendGroup<8, 16>(g, radii_, group, size, kt, kv, &scratch);
        else if (heads == 8 && d_head == 32) AttendGroup<8, 32>(g, radii_, group, size, kt, kv, &scratch);
        else if (heads == 8 && d_head == 8) AttendGroup<8, 8>(g, radii_, group, size, kt, kv, &scratch);
        else if (heads == 4 && d_head == 8) AttendGroup<4, 8>(g, radii_, group, size, kt, kv, &scratch);
        else if (heads == 4 && d_head == 16) AttendGroup<4, 16>(g, radii_, group, size, kt, kv, &scratch);
        else AttendGroup<0, 0>(g, radii_, group, size, kt, kv, &scratch);
      }
    };
    const int64_t cost = kTile * kTile * max_keys * d_r * 2;  // multiply-adds per group, roughly
    tensorflow::Shard(threads->num_threads, threads->workers, groups, cost, work);
  }

 private:
  std::vector<int> radii_;
  int num_heads_;
};

REGISTER_KERNEL_BUILDER(Name("SttWindowedAttention").Device(DEVICE_CPU), SttWindowedAttentionOp);

// ---------------------------------------------------------------------------
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

REGISTER_OP("SttNsmScore")
    .Input("features: float")
    .Attr("radius: int >= 0")
    .Output("scores: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->MakeShape({c->Dim(c->input(0), 0), c->Dim(c->input(0), 1), c->Dim(c->input(0), 2)}));
      return Status();
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
