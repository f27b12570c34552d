// The pipeline's device kernels, twins of the CPU core's functions (extract.hpp,
// stitch.hpp, mask.hpp, states.hpp) with the same arguments plus a stream, all
// pointers device memory. The per-pixel arithmetic is pixel.hpp's, shared with the
// CPU core. Each launcher checks its launch through UNETRT_CUDA_CHECK.
#pragma once

#include <cstdint>

#include "unetrt/cuda/runtime.hpp"
#include "unetrt/states.hpp"
#include "unetrt/stitch.hpp"
#include "unetrt/types.hpp"

namespace unetrt {
namespace cuda {

/// `unetrt::extract_tiles` on the device; `frame.data` and `tiles` are device pointers.
void extract_tiles(const FrameView& frame, const Tile* tiles, int64_t n_tiles, int64_t tile_h,
                   int64_t tile_w, const Affine& affine, Layout layout, float* out,
                   const Stream& stream);

/// Logits to probabilities in place: sigmoid of one channel, softmax over K > 1.
void activate(float* data, int64_t n, int64_t tile_h, int64_t tile_w, int64_t channels,
              Layout layout, const Stream& stream);

/// `unetrt::stitch_crop` on the device (dst: height x width x channels).
void stitch_crop(const TileBatch& batch, const Tile* tiles, float* dst, int64_t height,
                 int64_t width, const Stream& stream);

/// `unetrt::stitch_blend` on the device: each frame pixel adds the tiles in order,
/// so the sums are the CPU core's, bit for bit.
void stitch_blend(const TileBatch& batch, const Tile* tiles, const float* weights, float* acc,
                  float* weight_sum, int64_t height, int64_t width, const Stream& stream);

/// `unetrt::finish_blend` on the device.
void finish_blend(float* acc, const float* weight_sum, int64_t pixels, int64_t channels,
                  const Stream& stream);

/// `pixel::mask` of every pixel: `unetrt::threshold_mask` for one channel, else
/// `unetrt::class_mask`, on the device.
void class_mask(const float* prob, int64_t pixels, int64_t channels, bool independent,
                float threshold, uint8_t* out, const Stream& stream);

/// Adds the number of NaN and infinite values among data[0..items) to *count (the
/// check of model outputs, read back with the frame's result instead of a sync).
void count_nonfinite(const float* data, int64_t items, unsigned int* count,
                     const Stream& stream);

/// `unetrt::cut_states` on the device.
void cut_states(const float* map, const StateMap& shape, const Tile* tiles, int64_t n_tiles,
                int64_t tile_h, int64_t tile_w, float* out, const Stream& stream);

/// `unetrt::stitch_states` on the device.
void stitch_states(const float* states, const StateMap& shape, const Tile* tiles,
                   int64_t n_tiles, int64_t tile_h, int64_t tile_w, int64_t height,
                   int64_t width, int64_t padded_h, int64_t padded_w, float* map,
                   const Stream& stream);

}  // namespace cuda
}  // namespace unetrt
