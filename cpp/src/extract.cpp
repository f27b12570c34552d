#include "unetrt/extract.hpp"

#include <algorithm>
#include <vector>

#include "unetrt/check.hpp"
#include "unetrt/parallel.hpp"
#include "unetrt/pixel.hpp"

namespace unetrt {
namespace {

/// Scalars of the affine map held in locals: the compiler cannot prove that
/// writes to the float output leave an Affine in memory untouched.
struct Map {
  float scale, offset, lo, hi;
  float operator()(float x) const { return pixel::affine(x, scale, offset, lo, hi); }
};

/// A contiguous run of in-frame values: the loop the compiler vectorizes.
template <class T>
inline void map_run(const T* __restrict src, float* __restrict dst, int64_t count, Map map) {
  for (int64_t j = 0; j < count; ++j) dst[j] = map(static_cast<float>(src[j]));
}

template <class T>
void extract_typed(const FrameView& frame, const Tile* tiles, int64_t n_tiles, int64_t tile_h,
                   int64_t tile_w, const Affine& affine, Layout layout, float* out,
                   int threads) {
  const T* src = static_cast<const T*>(frame.data);
  const int64_t H = frame.height, W = frame.width, C = frame.channels;
  const Map map{affine.scale, affine.offset, affine.lo, affine.hi};

  // Reflect tables over every padded coordinate any window touches, so the
  // inner loops do a lookup instead of a modulo per pixel.
  int64_t end_y = 0, end_x = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    UNETRT_CHECK(tiles[t].win_y >= 0 && tiles[t].win_x >= 0, "tile window origin must be >= 0");
    end_y = std::max(end_y, tiles[t].win_y + tile_h);
    end_x = std::max(end_x, tiles[t].win_x + tile_w);
  }
  std::vector<int64_t> ymap(end_y), xmap(end_x);
  for (int64_t y = 0; y < end_y; ++y) ymap[y] = pixel::reflect(y, H);
  for (int64_t x = 0; x < end_x; ++x) xmap[x] = pixel::reflect(x, W);

  const bool channels_last = layout == Layout::kNHWC || C == 1;
  parallel_for(n_tiles * tile_h, tile_w * C, threads, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / tile_h, r = item % tile_h;
      const int64_t wx = tiles[t].win_x;
      const T* row = src + ymap[tiles[t].win_y + r] * W * C;
      const int64_t inside = std::clamp<int64_t>(W - wx, 0, tile_w);
      if (channels_last) {
        float* dst = out + (t * tile_h + r) * tile_w * C;
        map_run(row + wx * C, dst, inside * C, map);
        for (int64_t c = inside; c < tile_w; ++c) {
          const T* px = row + xmap[wx + c] * C;
          for (int64_t k = 0; k < C; ++k) dst[c * C + k] = map(static_cast<float>(px[k]));
        }
      } else {
        for (int64_t k = 0; k < C; ++k) {
          float* dst = out + ((t * C + k) * tile_h + r) * tile_w;
          const T* px = row + wx * C + k;
          for (int64_t c = 0; c < inside; ++c) dst[c] = map(static_cast<float>(px[c * C]));
          for (int64_t c = inside; c < tile_w; ++c)
            dst[c] = map(static_cast<float>(row[xmap[wx + c] * C + k]));
        }
      }
    }
  });
}

}  // namespace

void extract_tiles(const FrameView& frame, const Tile* tiles, int64_t n_tiles, int64_t tile_h,
                   int64_t tile_w, const Affine& affine, Layout layout, float* out,
                   int threads) {
  UNETRT_CHECK(frame.height >= 1 && frame.width >= 1 && frame.channels >= 1,
               "frame must not be empty");
  UNETRT_CHECK(tile_h >= 1 && tile_w >= 1, "tile size must be positive");
  UNETRT_CHECK(n_tiles >= 0, "number of tiles must be >= 0");
  switch (frame.dtype) {
    case DType::kUint8:
      return extract_typed<uint8_t>(frame, tiles, n_tiles, tile_h, tile_w, affine, layout, out,
                                    threads);
    case DType::kUint16:
      return extract_typed<uint16_t>(frame, tiles, n_tiles, tile_h, tile_w, affine, layout, out,
                                     threads);
    case DType::kFloat32:
      return extract_typed<float>(frame, tiles, n_tiles, tile_h, tile_w, affine, layout, out,
                                  threads);
  }
  UNETRT_CHECK(false, "unknown frame dtype");
}

void normalize(const FrameView& frame, const Affine& affine, float* out, int threads) {
  // The whole frame as one window: (1, H, W, C) in NHWC is exactly (H, W, C).
  const Tile whole{0, 0, 0, frame.height, 0, frame.width};
  extract_tiles(frame, &whole, 1, frame.height, frame.width, affine, Layout::kNHWC, out, threads);
}

}  // namespace unetrt
