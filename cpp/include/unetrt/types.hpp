// Plain value types shared by the core: element types, layouts, tile rows and
// the affine intensity map. Buffers are raw pointers to C-contiguous memory;
// the Python layer checks shapes, dtypes and contiguity before calling in.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

namespace unetrt {

/// Element type of a raw frame.
enum class DType { kUint8, kUint16, kFloat32 };

/// Memory layout of a batch of tiles: channels last or channels first.
enum class Layout { kNHWC, kNCHW };

/// One tile of a plan: the window origin in padded-frame coordinates and the
/// core (the pixels this tile is trusted for) as half-open ranges in frame
/// coordinates. Six int64 in this order, so an (n, 6) int64 array is an array
/// of Tile.
struct Tile {
  int64_t win_y;
  int64_t win_x;
  int64_t core_y0;
  int64_t core_y1;
  int64_t core_x0;
  int64_t core_x1;
};
static_assert(sizeof(Tile) == 6 * sizeof(int64_t) && std::is_standard_layout<Tile>::value,
              "Tile must match an (n, 6) int64 array row");

/// The intensity map y = clip(x * scale + offset, lo, hi), evaluated in float32
/// as two rounded operations (no fused multiply-add) so NumPy computes the same
/// bits. lo = -inf and hi = +inf mean no clipping.
struct Affine {
  float scale = 1.0f;
  float offset = 0.0f;
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
};

/// A read-only view of a C-contiguous frame of shape (height, width, channels).
struct FrameView {
  const void* data;
  DType dtype;
  int64_t height;
  int64_t width;
  int64_t channels;
};

}  // namespace unetrt
