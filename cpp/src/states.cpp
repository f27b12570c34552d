#include "unetrt/states.hpp"

#include "unetrt/check.hpp"
#include "unetrt/parallel.hpp"
#include "unetrt/pixel.hpp"

namespace unetrt {
namespace {

void check_shape(const StateMap& m, int64_t tile_h, int64_t tile_w) {
  UNETRT_CHECK(m.rows >= 1 && m.cols >= 1 && m.channels >= 1 && m.stride >= 1,
               "state map must not be empty");
  UNETRT_CHECK(tile_h % m.stride == 0 && tile_w % m.stride == 0,
               "the tile size must be a multiple of the state stride");
}

}  // namespace

void cut_states(const float* map, const StateMap& m, const Tile* tiles, int64_t n_tiles,
                int64_t tile_h, int64_t tile_w, float* out, int threads) {
  check_shape(m, tile_h, tile_w);
  const int64_t th = tile_h / m.stride, tw = tile_w / m.stride, K = m.channels;
  const bool nhwc = m.layout == Layout::kNHWC;
  for (int64_t t = 0; t < n_tiles; ++t)
    UNETRT_CHECK(tiles[t].win_y % m.stride == 0 && tiles[t].win_x % m.stride == 0 &&
                     tiles[t].win_y / m.stride + th <= m.rows &&
                     tiles[t].win_x / m.stride + tw <= m.cols,
                 "tile window must start on the stride and lie inside the state map");
  parallel_for(n_tiles * th, tw * K, threads, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / th, r = item % th;
      const int64_t y = tiles[t].win_y / m.stride + r, x0 = tiles[t].win_x / m.stride;
      for (int64_t c = 0; c < tw; ++c)
        for (int64_t k = 0; k < K; ++k)
          out[pixel::batch_index(nhwc, t, r, c, k, th, tw, K)] =
              map[pixel::map_index(nhwc, y, x0 + c, k, m.rows, m.cols, K)];
    }
  });
}

void stitch_states(const float* states, const StateMap& m, const Tile* tiles, int64_t n_tiles,
                   int64_t tile_h, int64_t tile_w, int64_t height, int64_t width,
                   int64_t padded_h, int64_t padded_w, float* map, int threads) {
  check_shape(m, tile_h, tile_w);
  const int64_t th = tile_h / m.stride, tw = tile_w / m.stride, K = m.channels;
  const bool nhwc = m.layout == Layout::kNHWC;
  for (int64_t t = 0; t < n_tiles; ++t) {
    const pixel::Cells c = pixel::state_core(tiles[t], m.stride, height, width, padded_h, padded_w);
    UNETRT_CHECK(c.y1 <= m.rows && c.x1 <= m.cols, "state core must lie inside the state map");
  }
  // Cores are disjoint: any split of the tiles over threads writes each cell once.
  parallel_for(n_tiles, th * tw * K, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Tile& s = tiles[t];
      const pixel::Cells c = pixel::state_core(s, m.stride, height, width, padded_h, padded_w);
      const int64_t oy = s.win_y / m.stride, ox = s.win_x / m.stride;
      for (int64_t y = c.y0; y < c.y1; ++y)
        for (int64_t x = c.x0; x < c.x1; ++x)
          for (int64_t k = 0; k < K; ++k)
            map[pixel::map_index(nhwc, y, x, k, m.rows, m.cols, K)] =
                states[pixel::batch_index(nhwc, t, y - oy, x - ox, k, th, tw, K)];
    }
  });
}

}  // namespace unetrt
