// Tile extraction with the intensity normalization fused in: one pass reads the
// raw frame (reflect-padded on the fly at the bottom/right) and writes float32
// model input. The whole-frame `normalize` is the same kernel, so training and
// inference compute identical numbers.
#pragma once

#include <cstdint>

#include "unetrt/types.hpp"

namespace unetrt {

/// Writes tiles[0..n_tiles) of `frame`, each tile_h x tile_w, normalized by
/// `affine`, into `out`: float32 of shape (n, tile_h, tile_w, C) for NHWC or
/// (n, C, tile_h, tile_w) for NCHW. Rows/columns past the frame are read
/// reflected (`pixel::reflect`). Uses up to `threads` threads (0 = all hardware threads).
void extract_tiles(const FrameView& frame, const Tile* tiles, int64_t n_tiles, int64_t tile_h,
                   int64_t tile_w, const Affine& affine, Layout layout, float* out,
                   int threads);

/// Normalizes a whole frame into `out` (float32, same (H, W, C) shape).
void normalize(const FrameView& frame, const Affine& affine, float* out, int threads);

}  // namespace unetrt
