// The per-pixel arithmetic of the pipeline, written once for the CPU core and the
// CUDA kernels: reflect indexing, the intensity map, where a tile's output lands in
// the frame, crop cores, blend sums, masks and the state-map cores of step models.
// Everything here is an inline __host__ __device__ function of plain values, so the
// CPU tests exercise the very code the kernels run. Both builds round the same way:
// the CPU core compiles with -ffp-contract=off and the CUDA code with --fmad=false,
// so a * b + c is two rounded operations everywhere.
#pragma once

#include <cstdint>

#include "unetrt/types.hpp"

#if defined(__CUDACC__)
#define UNETRT_HD __host__ __device__ __forceinline__
#else
#define UNETRT_HD inline
#endif

namespace unetrt {
namespace pixel {

/// A padded-frame coordinate (>= 0) in the frame, like NumPy's pad(mode="reflect"):
/// mirror without repeating the edge, period 2 * (extent - 1); extent 1 maps to 0.
UNETRT_HD int64_t reflect(int64_t i, int64_t extent) {
  if (i < extent) return i;
  if (extent == 1) return 0;
  const int64_t period = 2 * (extent - 1);
  const int64_t m = i % period;
  return m < extent ? m : period - m;
}

/// clip(x * scale + offset, lo, hi) in float32, NaN passing through as numpy.clip.
UNETRT_HD float affine(float x, float scale, float offset, float lo, float hi) {
  const float y = x * scale + offset;
  return y < lo ? lo : (y > hi ? hi : y);
}

/// Element index of (tile t, row r, column c, channel k) in a batch of tiles of
/// tile_h x tile_w with `channels` values per pixel, in NHWC or NCHW.
UNETRT_HD int64_t batch_index(bool nhwc, int64_t t, int64_t r, int64_t c, int64_t k,
                              int64_t tile_h, int64_t tile_w, int64_t channels) {
  return nhwc ? ((t * tile_h + r) * tile_w + c) * channels + k
              : ((t * channels + k) * tile_h + r) * tile_w + c;
}

/// Whether frame pixel (y, x) is in the tile's core (the pixels it is trusted for).
UNETRT_HD bool in_core(const Tile& s, int64_t y, int64_t x) {
  return s.core_y0 <= y && y < s.core_y1 && s.core_x0 <= x && x < s.core_x1;
}

/// Whether frame pixel (y, x) is in the tile's window (tile_h x tile_w at its origin).
UNETRT_HD bool in_window(const Tile& s, int64_t y, int64_t x, int64_t tile_h, int64_t tile_w) {
  return s.win_y <= y && y < s.win_y + tile_h && s.win_x <= x && x < s.win_x + tile_w;
}

/// One tile's contribution to a blend sum: sum + weight * value, rounded twice.
UNETRT_HD float blend_add(float sum, float weight, float value) { return sum + weight * value; }

/// 255 where p > threshold, else 0 (NaN gives 0).
UNETRT_HD uint8_t threshold(float p, float t) { return p > t ? 255 : 0; }

/// Index of the largest of `classes` values at v[0], v[stride], ... (the first on
/// ties, like numpy.argmax).
UNETRT_HD int64_t argmax(const float* v, int64_t classes, int64_t stride) {
  int64_t best = 0;
  for (int64_t k = 1; k < classes; ++k)
    if (v[k * stride] > v[best * stride]) best = k;
  return best;
}

/// The most channels a uint8 class mask can tell apart: 256 classes, or 255 independent
/// channels (1 + channel, 0 for none).
UNETRT_HD constexpr int64_t max_mask_channels(bool independent) { return independent ? 255 : 256; }

/// The class of one pixel of a K-channel output: the argmax for classes (softmax or
/// logits); for independent sigmoid channels 1 + the most probable channel where it
/// passes the threshold, else 0.
UNETRT_HD uint8_t class_mask(const float* v, int64_t classes, int64_t stride, bool independent,
                             float t) {
  const int64_t best = argmax(v, classes, stride);
  if (!independent) return static_cast<uint8_t>(best);
  return v[best * stride] > t ? static_cast<uint8_t>(best + 1) : 0;
}

/// The mask value of one pixel, the rule of unetrt.masks.mask_of: one channel is
/// thresholded (0 / 255), several give `class_mask`.
UNETRT_HD uint8_t mask(const float* v, int64_t channels, int64_t stride, bool independent,
                       float t) {
  return channels == 1 ? threshold(v[0], t) : class_mask(v, channels, stride, independent, t);
}

/// The part of a state map one tile's state output is kept for, in map cells:
/// the tile's core with its borders rounded down to the stride, the last core
/// reaching the padded border. Half-open [y0, y1) x [x0, x1).
struct Cells {
  int64_t y0, y1, x0, x1;
};
UNETRT_HD Cells state_core(const Tile& s, int64_t stride, int64_t height, int64_t width,
                           int64_t padded_h, int64_t padded_w) {
  const int64_t y1 = s.core_y1 == height ? padded_h : s.core_y1;
  const int64_t x1 = s.core_x1 == width ? padded_w : s.core_x1;
  return Cells{s.core_y0 / stride, y1 / stride, s.core_x0 / stride, x1 / stride};
}

/// Element index of cell (y, x), channel k, of a (rows, cols) map with `channels`
/// channels in the model's layout (channels last, or channels first).
UNETRT_HD int64_t map_index(bool nhwc, int64_t y, int64_t x, int64_t k, int64_t rows,
                            int64_t cols, int64_t channels) {
  return nhwc ? (y * cols + x) * channels + k : (k * rows + y) * cols + x;
}

}  // namespace pixel
}  // namespace unetrt
