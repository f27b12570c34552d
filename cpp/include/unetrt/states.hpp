// The whole-frame state maps of step models (ConvLSTM): each tile's state window is
// cut from the map read by a step, and each tile's state core is written into the
// map of the next step. See docs/ARCHITECTURE.md, "Temporal models".
#pragma once

#include <cstdint>

#include "unetrt/types.hpp"

namespace unetrt {

/// A state map: (rows, cols) cells of `channels` values, channels last (NHWC) or
/// first (NCHW), one cell per `stride` x `stride` padded-frame pixels.
struct StateMap {
  int64_t rows;
  int64_t cols;
  int64_t channels;
  int64_t stride;
  Layout layout;
};

/// Writes each tile's state window (tile_h / stride x tile_w / stride cells at its
/// window origin / stride) of `map` into `out`, a batch in the map's layout.
void cut_states(const float* map, const StateMap& shape, const Tile* tiles, int64_t n_tiles,
                int64_t tile_h, int64_t tile_w, float* out, int threads);

/// Copies each tile's state core (`pixel::state_core`) from the batch `states` into
/// `map`; the frame is height x width, padded to padded_h x padded_w.
void stitch_states(const float* states, const StateMap& shape, const Tile* tiles,
                   int64_t n_tiles, int64_t tile_h, int64_t tile_w, int64_t height,
                   int64_t width, int64_t padded_h, int64_t padded_w, float* map, int threads);

}  // namespace unetrt
