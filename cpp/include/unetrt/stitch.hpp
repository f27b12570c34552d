// Stitching model outputs of tiles back into a frame-sized map. `crop` copies
// each tile's core (the cores partition the frame, so the result is exact);
// `blend` accumulates whole windows weighted by a taper and divides at the end.
#pragma once

#include <cstdint>

#include "unetrt/types.hpp"

namespace unetrt {

/// Shape of a batch of tile outputs: n tiles of tile_h x tile_w with `channels`
/// values per pixel, in `layout`.
struct TileBatch {
  const float* data;
  int64_t n;
  int64_t tile_h;
  int64_t tile_w;
  int64_t channels;
  Layout layout;
};

/// Copies the core of each tile output into dst, float32 (height, width, channels).
void stitch_crop(const TileBatch& batch, const Tile* tiles, float* dst, int64_t height,
                 int64_t width, int threads);

/// Adds weights * output of each whole window (its part inside the frame) into acc
/// (height, width, channels) and weights into weight_sum (height, width). Tiles are
/// added in order, so the sums are deterministic whatever the thread count.
void stitch_blend(const TileBatch& batch, const Tile* tiles, const float* weights, float* acc,
                  float* weight_sum, int64_t height, int64_t width, int threads);

/// Divides acc (pixels x channels) by weight_sum (pixels) in place.
void finish_blend(float* acc, const float* weight_sum, int64_t pixels, int64_t channels,
                  int threads);

/// Fills out (tile_h x tile_w) with a separable Gaussian taper: sigma = T / 8 per
/// axis, peak 1, floored at 1e-3 so every pixel keeps some weight.
void taper_weights(int64_t tile_h, int64_t tile_w, float* out);

}  // namespace unetrt
