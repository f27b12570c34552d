#include <cmath>

#include "unetrt/check.hpp"
#include "unetrt/cuda/kernels.hpp"
#include "unetrt/pixel.hpp"

namespace unetrt {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Blocks for `items` work items (one thread each), at least one.
unsigned blocks(int64_t items) {
  return static_cast<unsigned>(items > 0 ? (items + kThreads - 1) / kThreads : 1);
}

void check_launch() { UNETRT_CUDA_CHECK(cudaGetLastError()); }

template <class T>
__global__ void extract_kernel(const T* src, int64_t H, int64_t W, int64_t C, const Tile* tiles,
                               int64_t items, int64_t tile_h, int64_t tile_w, Affine a,
                               bool nhwc, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const int64_t c = i % tile_w, r = (i / tile_w) % tile_h, t = i / (tile_w * tile_h);
  const Tile s = tiles[t];
  const int64_t y = pixel::reflect(s.win_y + r, H), x = pixel::reflect(s.win_x + c, W);
  const T* px = src + (y * W + x) * C;
  for (int64_t k = 0; k < C; ++k)
    out[pixel::batch_index(nhwc, t, r, c, k, tile_h, tile_w, C)] =
        pixel::affine(static_cast<float>(px[k]), a.scale, a.offset, a.lo, a.hi);
}

__global__ void activate_kernel(float* data, int64_t items, int64_t tile_h, int64_t tile_w,
                                int64_t K, bool nhwc) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const int64_t c = i % tile_w, r = (i / tile_w) % tile_h, t = i / (tile_w * tile_h);
  float* v = data + pixel::batch_index(nhwc, t, r, c, 0, tile_h, tile_w, K);
  const int64_t stride = nhwc ? 1 : tile_h * tile_w;
  if (K == 1) {
    v[0] = 1.0f / (1.0f + expf(-v[0]));
    return;
  }
  float top = v[0];
  for (int64_t k = 1; k < K; ++k) top = fmaxf(top, v[k * stride]);
  float sum = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    v[k * stride] = expf(v[k * stride] - top);
    sum += v[k * stride];
  }
  for (int64_t k = 0; k < K; ++k) v[k * stride] /= sum;
}

__global__ void crop_kernel(TileBatch b, const Tile* tiles, int64_t items, float* dst,
                            int64_t width) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const int64_t c = i % b.tile_w, r = (i / b.tile_w) % b.tile_h, t = i / (b.tile_w * b.tile_h);
  const Tile s = tiles[t];
  const int64_t y = s.win_y + r, x = s.win_x + c;
  if (!pixel::in_core(s, y, x)) return;
  const bool nhwc = b.layout == Layout::kNHWC;
  for (int64_t k = 0; k < b.channels; ++k)
    dst[(y * width + x) * b.channels + k] =
        b.data[pixel::batch_index(nhwc, t, r, c, k, b.tile_h, b.tile_w, b.channels)];
}

__global__ void blend_kernel(TileBatch b, const Tile* tiles, const float* weights, float* acc,
                             float* weight_sum, int64_t height, int64_t width) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= height * width) return;
  const int64_t y = p / width, x = p % width;
  const bool nhwc = b.layout == Layout::kNHWC;
  for (int64_t t = 0; t < b.n; ++t) {  // in order: the CPU core's sums
    const Tile s = tiles[t];
    if (!pixel::in_window(s, y, x, b.tile_h, b.tile_w)) continue;
    const int64_t r = y - s.win_y, c = x - s.win_x;
    const float w = weights[r * b.tile_w + c];
    weight_sum[p] = weight_sum[p] + w;
    for (int64_t k = 0; k < b.channels; ++k)
      acc[p * b.channels + k] = pixel::blend_add(
          acc[p * b.channels + k], w,
          b.data[pixel::batch_index(nhwc, t, r, c, k, b.tile_h, b.tile_w, b.channels)]);
  }
}

__global__ void finish_kernel(float* acc, const float* weight_sum, int64_t items,
                              int64_t channels) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < items) acc[i] /= weight_sum[i / channels];
}

__global__ void mask_kernel(const float* prob, int64_t pixels, int64_t K, bool independent,
                            float threshold, uint8_t* out) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p < pixels) out[p] = pixel::mask(prob + p * K, K, 1, independent, threshold);
}

__global__ void cut_states_kernel(const float* map, StateMap m, const Tile* tiles,
                                  int64_t items, int64_t th, int64_t tw, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const int64_t c = i % tw, r = (i / tw) % th, t = i / (tw * th);
  const bool nhwc = m.layout == Layout::kNHWC;
  const int64_t y = tiles[t].win_y / m.stride + r, x = tiles[t].win_x / m.stride + c;
  for (int64_t k = 0; k < m.channels; ++k)
    out[pixel::batch_index(nhwc, t, r, c, k, th, tw, m.channels)] =
        map[pixel::map_index(nhwc, y, x, k, m.rows, m.cols, m.channels)];
}

__global__ void stitch_states_kernel(const float* states, StateMap m, const Tile* tiles,
                                     int64_t items, int64_t th, int64_t tw, int64_t height,
                                     int64_t width, int64_t padded_h, int64_t padded_w,
                                     float* map) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const int64_t c = i % tw, r = (i / tw) % th, t = i / (tw * th);
  const Tile s = tiles[t];
  const pixel::Cells core = pixel::state_core(s, m.stride, height, width, padded_h, padded_w);
  const int64_t y = s.win_y / m.stride + r, x = s.win_x / m.stride + c;
  if (y < core.y0 || y >= core.y1 || x < core.x0 || x >= core.x1) return;
  const bool nhwc = m.layout == Layout::kNHWC;
  for (int64_t k = 0; k < m.channels; ++k)
    map[pixel::map_index(nhwc, y, x, k, m.rows, m.cols, m.channels)] =
        states[pixel::batch_index(nhwc, t, r, c, k, th, tw, m.channels)];
}

__global__ void nonfinite_kernel(const float* data, int64_t items, unsigned int* count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < items && !isfinite(data[i])) atomicAdd(count, 1u);
}

}  // namespace

void count_nonfinite(const float* data, int64_t items, unsigned int* count,
                     const Stream& stream) {
  if (items == 0) return;
  nonfinite_kernel<<<blocks(items), kThreads, 0, stream.handle()>>>(data, items, count);
  check_launch();
}

void extract_tiles(const FrameView& f, const Tile* tiles, int64_t n_tiles, int64_t tile_h,
                   int64_t tile_w, const Affine& affine, Layout layout, float* out,
                   const Stream& stream) {
  UNETRT_CHECK(f.height >= 1 && f.width >= 1 && f.channels >= 1, "frame must not be empty");
  UNETRT_CHECK(tile_h >= 1 && tile_w >= 1 && n_tiles >= 0, "tile size must be positive");
  const int64_t items = n_tiles * tile_h * tile_w;
  if (items == 0) return;
  const bool nhwc = layout == Layout::kNHWC;
  const unsigned grid = blocks(items);
  switch (f.dtype) {
    case DType::kUint8:
      extract_kernel<<<grid, kThreads, 0, stream.handle()>>>(
          static_cast<const uint8_t*>(f.data), f.height, f.width, f.channels, tiles, items,
          tile_h, tile_w, affine, nhwc, out);
      break;
    case DType::kUint16:
      extract_kernel<<<grid, kThreads, 0, stream.handle()>>>(
          static_cast<const uint16_t*>(f.data), f.height, f.width, f.channels, tiles, items,
          tile_h, tile_w, affine, nhwc, out);
      break;
    case DType::kFloat32:
      extract_kernel<<<grid, kThreads, 0, stream.handle()>>>(
          static_cast<const float*>(f.data), f.height, f.width, f.channels, tiles, items, tile_h,
          tile_w, affine, nhwc, out);
      break;
  }
  check_launch();
}

void activate(float* data, int64_t n, int64_t tile_h, int64_t tile_w, int64_t channels,
              Layout layout, const Stream& stream) {
  const int64_t items = n * tile_h * tile_w;
  if (items == 0) return;
  activate_kernel<<<blocks(items), kThreads, 0, stream.handle()>>>(
      data, items, tile_h, tile_w, channels, layout == Layout::kNHWC);
  check_launch();
}

void stitch_crop(const TileBatch& b, const Tile* tiles, float* dst, int64_t height,
                 int64_t width, const Stream& stream) {
  UNETRT_CHECK(height >= 1 && width >= 1, "frame must not be empty");
  const int64_t items = b.n * b.tile_h * b.tile_w;
  if (items == 0) return;
  crop_kernel<<<blocks(items), kThreads, 0, stream.handle()>>>(b, tiles, items, dst, width);
  check_launch();
}

void stitch_blend(const TileBatch& b, const Tile* tiles, const float* weights, float* acc,
                  float* weight_sum, int64_t height, int64_t width, const Stream& stream) {
  UNETRT_CHECK(height >= 1 && width >= 1, "frame must not be empty");
  if (b.n == 0) return;
  blend_kernel<<<blocks(height * width), kThreads, 0, stream.handle()>>>(
      b, tiles, weights, acc, weight_sum, height, width);
  check_launch();
}

void finish_blend(float* acc, const float* weight_sum, int64_t pixels, int64_t channels,
                  const Stream& stream) {
  const int64_t items = pixels * channels;
  if (items == 0) return;
  finish_kernel<<<blocks(items), kThreads, 0, stream.handle()>>>(acc, weight_sum, items,
                                                                  channels);
  check_launch();
}

void class_mask(const float* prob, int64_t pixels, int64_t channels, bool independent,
                float threshold, uint8_t* out, const Stream& stream) {
  UNETRT_CHECK(channels >= 1 && channels <= pixel::max_mask_channels(independent),
               "a uint8 mask holds at most 256 classes (255 independent channels)");
  if (pixels == 0) return;
  mask_kernel<<<blocks(pixels), kThreads, 0, stream.handle()>>>(prob, pixels, channels,
                                                                 independent, threshold, out);
  check_launch();
}

void cut_states(const float* map, const StateMap& m, const Tile* tiles, int64_t n_tiles,
                int64_t tile_h, int64_t tile_w, float* out, const Stream& stream) {
  UNETRT_CHECK(m.stride >= 1 && tile_h % m.stride == 0 && tile_w % m.stride == 0,
               "the tile size must be a multiple of the state stride");
  const int64_t th = tile_h / m.stride, tw = tile_w / m.stride, items = n_tiles * th * tw;
  if (items == 0) return;
  cut_states_kernel<<<blocks(items), kThreads, 0, stream.handle()>>>(map, m, tiles, items, th,
                                                                      tw, out);
  check_launch();
}

void stitch_states(const float* states, const StateMap& m, const Tile* tiles, int64_t n_tiles,
                   int64_t tile_h, int64_t tile_w, int64_t height, int64_t width,
                   int64_t padded_h, int64_t padded_w, float* map, const Stream& stream) {
  UNETRT_CHECK(m.stride >= 1 && tile_h % m.stride == 0 && tile_w % m.stride == 0,
               "the tile size must be a multiple of the state stride");
  const int64_t th = tile_h / m.stride, tw = tile_w / m.stride, items = n_tiles * th * tw;
  if (items == 0) return;
  stitch_states_kernel<<<blocks(items), kThreads, 0, stream.handle()>>>(
      states, m, tiles, items, th, tw, height, width, padded_h, padded_w, map);
  check_launch();
}

}  // namespace cuda
}  // namespace unetrt
