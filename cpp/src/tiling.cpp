#include "unetrt/tiling.hpp"

#include <algorithm>

#include "unetrt/check.hpp"

namespace unetrt {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t v, int64_t a) { return ceil_div(v, a) * a; }

}  // namespace

AxisPlan plan_axis(int64_t extent, int64_t alignment, int64_t halo, int64_t max_tile,
                   bool fixed) {
  UNETRT_CHECK(extent >= 1, "frame extent must be >= 1");
  UNETRT_CHECK(alignment >= 1 && (alignment & (alignment - 1)) == 0,
               "alignment must be a power of two");
  UNETRT_CHECK(halo >= 0, "halo must be >= 0");
  UNETRT_CHECK(max_tile >= alignment, "the tile size must be at least the alignment");
  const int64_t a = alignment;
  const int64_t h = round_up(halo, a);

  AxisPlan plan;
  plan.padded = round_up(extent, a);
  if (fixed) {
    UNETRT_CHECK(max_tile % a == 0, "a fixed tile size must be a multiple of the alignment");
    plan.tile = max_tile;
    plan.padded = std::max(plan.padded, plan.tile);
  } else {
    // The fewest, largest windows: the whole padded axis when it fits.
    plan.tile = plan.padded <= max_tile ? plan.padded : max_tile / a * a;
  }
  const int64_t T = plan.tile;
  const int64_t span = plan.padded - T;  // origin of the last window
  if (span == 0) {
    plan.origin = {0};
    plan.core_begin = {0};
    plan.core_end = {extent};
    return plan;
  }

  // Neighbouring origins at most `core` apart keep >= h of context on both sides
  // of every core boundary; the stride is rounded up to the alignment grid, which
  // stays <= core because core is itself a multiple of a.
  const int64_t core = T - 2 * h;
  UNETRT_CHECK(core >= a, "tile size too small for the halo: need tile - 2 * halo >= alignment");
  const int64_t n = 1 + ceil_div(span, core);
  const int64_t stride = round_up(ceil_div(span, n - 1), a);
  plan.origin.resize(n);
  for (int64_t i = 0; i < n; ++i) plan.origin[i] = std::min(i * stride, span);

  // Boundary between windows i and i + 1: the midpoint of [o[i+1] + h, o[i] + T - h].
  // Origins are distinct multiples of a, so consecutive boundaries are >= a apart;
  // the last boundary is <= o[n-2] + T - h <= Hp - a < extent (the padding is
  // shorter than a when several windows are needed). No core is ever empty.
  plan.core_begin.assign(n, 0);
  plan.core_end.assign(n, extent);
  for (int64_t i = 0; i + 1 < n; ++i) {
    const int64_t boundary = (plan.origin[i] + plan.origin[i + 1] + T) / 2;
    plan.core_end[i] = plan.core_begin[i + 1] = boundary;
  }
  for (int64_t i = 0; i < n; ++i)
    UNETRT_CHECK(plan.core_begin[i] < plan.core_end[i], "tile planner made an empty core");
  return plan;
}

TilePlan plan_tiles(int64_t height, int64_t width, int64_t alignment, int64_t halo,
                    int64_t max_tile_h, int64_t max_tile_w, bool fixed) {
  const AxisPlan rows = plan_axis(height, alignment, halo, max_tile_h, fixed);
  const AxisPlan cols = plan_axis(width, alignment, halo, max_tile_w, fixed);
  TilePlan plan;
  plan.tile_h = rows.tile;
  plan.tile_w = cols.tile;
  plan.padded_h = rows.padded;
  plan.padded_w = cols.padded;
  plan.tiles.reserve(rows.origin.size() * cols.origin.size());
  for (size_t i = 0; i < rows.origin.size(); ++i) {
    for (size_t j = 0; j < cols.origin.size(); ++j) {
      plan.tiles.push_back(Tile{rows.origin[i], cols.origin[j], rows.core_begin[i],
                                rows.core_end[i], cols.core_begin[j], cols.core_end[j]});
    }
  }
  return plan;
}

}  // namespace unetrt
