#include "unetrt/stitch.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "unetrt/check.hpp"
#include "unetrt/parallel.hpp"
#include "unetrt/pixel.hpp"

namespace unetrt {
namespace {

void check_batch(const TileBatch& b, int64_t height, int64_t width) {
  UNETRT_CHECK(b.n >= 0 && b.tile_h >= 1 && b.tile_w >= 1 && b.channels >= 1,
               "tile outputs must have a positive size");
  UNETRT_CHECK(height >= 1 && width >= 1, "frame must not be empty");
}

// Offset of element (row, col, channel) of tile t's output.
struct TileIndex {
  const TileBatch& b;
  int64_t tile_size() const { return b.tile_h * b.tile_w * b.channels; }
  // For channels-last data (or one channel): start of the row.
  const float* row(int64_t t, int64_t r) const {
    return b.data + t * tile_size() + r * b.tile_w * b.channels;
  }
  // For channels-first data: start of the row in channel k's plane.
  const float* plane_row(int64_t t, int64_t k, int64_t r) const {
    return b.data + t * tile_size() + (k * b.tile_h + r) * b.tile_w;
  }
};

// dst[c * dst_stride] += w[c] * src[c * src_stride] (`pixel::blend_add`); the
// unit-stride case (one channel, or channels-first input) is a separate loop so it
// vectorizes.
inline void weighted_add(float* __restrict dst, int64_t dst_stride, const float* __restrict w,
                         const float* __restrict src, int64_t src_stride, int64_t n) {
  if (dst_stride == 1 && src_stride == 1) {
    for (int64_t c = 0; c < n; ++c) dst[c] = pixel::blend_add(dst[c], w[c], src[c]);
  } else {
    for (int64_t c = 0; c < n; ++c)
      dst[c * dst_stride] = pixel::blend_add(dst[c * dst_stride], w[c], src[c * src_stride]);
  }
}

}  // namespace

void stitch_crop(const TileBatch& b, const Tile* tiles, float* dst, int64_t height, int64_t width,
                 int threads) {
  check_batch(b, height, width);
  for (int64_t t = 0; t < b.n; ++t) {
    const Tile& s = tiles[t];
    UNETRT_CHECK(0 <= s.core_y0 && s.core_y0 <= s.core_y1 && s.core_y1 <= height &&
                     0 <= s.core_x0 && s.core_x0 <= s.core_x1 && s.core_x1 <= width,
                 "tile core must lie inside the frame");
    UNETRT_CHECK(s.win_y <= s.core_y0 && s.core_y1 <= s.win_y + b.tile_h &&
                     s.win_x <= s.core_x0 && s.core_x1 <= s.win_x + b.tile_w,
                 "tile core must lie inside its window");
  }
  const int64_t K = b.channels;
  const bool channels_last = b.layout == Layout::kNHWC || K == 1;
  const TileIndex at{b};
  // Split the frame into bands of rows: cores are disjoint, and so are bands.
  parallel_for(height, width * K, threads, [&](int64_t y0, int64_t y1) {
    for (int64_t t = 0; t < b.n; ++t) {
      const Tile& s = tiles[t];
      const int64_t cols = s.core_x1 - s.core_x0, c0 = s.core_x0 - s.win_x;
      for (int64_t y = std::max(y0, s.core_y0); y < std::min(y1, s.core_y1); ++y) {
        const int64_t r = y - s.win_y;
        float* d = dst + (y * width + s.core_x0) * K;
        if (channels_last) {
          std::memcpy(d, at.row(t, r) + c0 * K, sizeof(float) * cols * K);
        } else {
          for (int64_t k = 0; k < K; ++k) {
            const float* src = at.plane_row(t, k, r) + c0;
            for (int64_t c = 0; c < cols; ++c) d[c * K + k] = src[c];
          }
        }
      }
    }
  });
}

void stitch_blend(const TileBatch& b, const Tile* tiles, const float* weights, float* acc,
                  float* weight_sum, int64_t height, int64_t width, int threads) {
  check_batch(b, height, width);
  for (int64_t t = 0; t < b.n; ++t)
    UNETRT_CHECK(tiles[t].win_y >= 0 && tiles[t].win_x >= 0, "tile window origin must be >= 0");
  const int64_t K = b.channels;
  const bool channels_last = b.layout == Layout::kNHWC || K == 1;
  const TileIndex at{b};
  // Windows overlap, so split by bands of frame rows (each band owned by one
  // thread) and add the tiles in order within a band: no races, fixed sums.
  parallel_for(height, width * K, threads, [&](int64_t y0, int64_t y1) {
    for (int64_t t = 0; t < b.n; ++t) {
      const Tile& s = tiles[t];
      const int64_t cols = std::min(s.win_x + b.tile_w, width) - s.win_x;
      if (cols <= 0) continue;
      const int64_t y_end = std::min({y1, s.win_y + b.tile_h, height});
      for (int64_t y = std::max(y0, s.win_y); y < y_end; ++y) {
        const int64_t r = y - s.win_y;
        const float* w = weights + r * b.tile_w;
        float* ws = weight_sum + y * width + s.win_x;
        float* a = acc + (y * width + s.win_x) * K;
        for (int64_t c = 0; c < cols; ++c) ws[c] += w[c];
        for (int64_t k = 0; k < K; ++k) {
          if (channels_last) {
            weighted_add(a + k, K, w, at.row(t, r) + k, K, cols);
          } else {
            weighted_add(a + k, K, w, at.plane_row(t, k, r), 1, cols);
          }
        }
      }
    }
  });
}

void finish_blend(float* acc, const float* weight_sum, int64_t pixels, int64_t channels,
                  int threads) {
  UNETRT_CHECK(pixels >= 0 && channels >= 1, "blend buffers must have a positive size");
  parallel_for(pixels, channels, threads, [=](int64_t p0, int64_t p1) {
    float* __restrict a = acc;
    const float* __restrict ws = weight_sum;
    if (channels == 1) {  // the common case, as a loop that vectorizes
      for (int64_t p = p0; p < p1; ++p) a[p] /= ws[p];
      return;
    }
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t k = 0; k < channels; ++k) a[p * channels + k] /= ws[p];
  });
}

void taper_weights(int64_t tile_h, int64_t tile_w, float* out) {
  UNETRT_CHECK(tile_h >= 1 && tile_w >= 1, "tile size must be positive");
  auto gaussian = [](int64_t n) {
    const double sigma = n / 8.0, center = (n - 1) / 2.0;
    std::vector<double> g(n);
    for (int64_t i = 0; i < n; ++i) g[i] = std::exp(-0.5 * std::pow((i - center) / sigma, 2));
    const double peak = *std::max_element(g.begin(), g.end());
    for (double& v : g) v /= peak;
    return g;
  };
  const std::vector<double> gy = gaussian(tile_h), gx = gaussian(tile_w);
  for (int64_t r = 0; r < tile_h; ++r)
    for (int64_t c = 0; c < tile_w; ++c)
      out[r * tile_w + c] = static_cast<float>(std::max(gy[r] * gx[c], 1e-3));
}

}  // namespace unetrt
