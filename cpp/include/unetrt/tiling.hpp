// Tile planning: which windows of the (bottom/right reflect-padded) frame to feed
// the model, and which pixels of each window's output to keep. See
// docs/ARCHITECTURE.md, "Tiling semantics".
#pragma once

#include <cstdint>
#include <vector>

#include "unetrt/types.hpp"

namespace unetrt {

/// The tiling of one axis.
struct AxisPlan {
  int64_t tile = 0;    ///< Window length T (a multiple of the alignment).
  int64_t padded = 0;  ///< Padded extent Hp >= T.
  std::vector<int64_t> origin;      ///< Window origins, aligned, first 0, last Hp - T.
  std::vector<int64_t> core_begin;  ///< Core starts (frame coordinates), first 0.
  std::vector<int64_t> core_end;    ///< Core ends (exclusive), last equals the extent.
};

/// A 2-D plan: the product of the row and column plans, tiles in row-major order.
struct TilePlan {
  int64_t tile_h = 0;
  int64_t tile_w = 0;
  int64_t padded_h = 0;
  int64_t padded_w = 0;
  std::vector<Tile> tiles;
};

/// Plans one axis of length `extent`. `alignment` is a power of two, `halo` is
/// rounded up to a multiple of it. With `fixed`, `max_tile` is the model's static
/// size (a multiple of the alignment) and the axis is padded to at least that;
/// otherwise the fewest, largest windows of at most `max_tile` are used. Throws
/// unetrt::Error if several windows are needed and T - 2 * halo < alignment.
AxisPlan plan_axis(int64_t extent, int64_t alignment, int64_t halo, int64_t max_tile, bool fixed);

/// Plans a frame of height x width: plan_axis on each axis, then their product.
TilePlan plan_tiles(int64_t height, int64_t width, int64_t alignment, int64_t halo,
                    int64_t max_tile_h, int64_t max_tile_w, bool fixed);

}  // namespace unetrt
