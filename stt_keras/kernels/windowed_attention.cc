// Windowed temporal attention of the selected queries only: the STT's sparse
// attention as one fused CPU kernel (stt_keras/kernels/build.py builds it).
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
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "op_common.h"
#include "simd.h"

namespace stt_kernels {
namespace {

constexpr int64_t kPrefetch = 8;  // value rows fetched ahead in the weighted sum

struct Geometry {
  int64_t h, w, frames, padded_w, d_r, d_head;
  int heads;
  int64_t max_keys;
};

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
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle queries, positions, key_values;
      TF_RETURN_IF_ERROR(InputWithRank(c, 0, 3, "queries", "[B, N, d_r]", &queries));
      TF_RETURN_IF_ERROR(InputWithRank(c, 1, 2, "positions", "[B, N]", &positions));
      TF_RETURN_IF_ERROR(InputWithRank(c, 2, 5, "key_values", "[B, T, h, w, 2 d_r]", &key_values));
      const DimensionHandle batch = c->Dim(queries, 0), d_r = c->Dim(queries, 2);
      TF_RETURN_IF_ERROR(SameDim(c, c->Dim(positions, 0), batch, "positions must be [B, N] like queries"));
      TF_RETURN_IF_ERROR(SameDim(c, c->Dim(positions, 1), c->Dim(queries, 1), "positions must be [B, N] like queries"));
      DimensionHandle twice_d_r;
      TF_RETURN_IF_ERROR(c->Multiply(d_r, 2, &twice_d_r));
      const char* kv_like_queries = "key_values must be [B, T, h, w, 2 d_r] with the queries' B and d_r";
      TF_RETURN_IF_ERROR(SameDim(c, c->Dim(key_values, 0), batch, kv_like_queries));
      TF_RETURN_IF_ERROR(SameDim(c, c->Dim(key_values, 4), twice_d_r, kv_like_queries));
      std::vector<int> radii;
      int num_heads = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("radii", &radii));
      TF_RETURN_IF_ERROR(c->GetAttr("num_heads", &num_heads));
      const DimensionHandle frames = c->Dim(key_values, 1);
      if (c->ValueKnown(frames) && c->Value(frames) != static_cast<int64_t>(radii.size())) {
        return InvalidArgument("key_values has ", c->Value(frames), " frames but radii has ", radii.size());
      }
      if (c->ValueKnown(d_r) && c->Value(d_r) % num_heads != 0) {
        return InvalidArgument("d_r must be divisible by num_heads (got ", c->Value(d_r), " and ", num_heads, ")");
      }
      c->set_output(0, queries);
      return absl::OkStatus();
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
    OP_REQUIRES(context, positions.dims() == 2, InvalidArgument("positions must be [B, N], got ", positions.shape().DebugString()));
    OP_REQUIRES(context, key_values.dims() == 5, InvalidArgument("key_values must be [B, T, h, w, 2 d_r], got ",
                                                   key_values.shape().DebugString()));
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
    for (int r : radii_) {  // a window clipped to the map: a radius past the map's size costs no more
      const int64_t side = 2 * static_cast<int64_t>(r) + 1;
      max_keys += std::min(side, h) * std::min(side, w);
    }
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

}  // namespace
}  // namespace stt_kernels
