// pybind11 glue for unetrt._core: adapts types and errors, releases the GIL.
// The Python wrappers (unetrt.tiling, unetrt.normalize) validate user input and
// allocate; the checks here only keep a wrong call from touching memory it does
// not own, and report it as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <vector>

#include "unetrt/check.hpp"
#include "unetrt/extract.hpp"
#include "unetrt/info.hpp"
#include "unetrt/mask.hpp"
#include "unetrt/parallel.hpp"
#include "unetrt/states.hpp"
#include "unetrt/stitch.hpp"
#include "unetrt/tiling.hpp"

#ifdef UNETRT_WITH_CUDA
#include "unetrt/cuda/runtime.hpp"
#endif

namespace py = pybind11;
using unetrt::Layout;
using unetrt::Tile;

#ifndef UNETRT_VERSION
#define UNETRT_VERSION "0+unknown"
#endif

namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

// A C-contiguous array of T (no silent conversion: an output written into a
// converted copy would be lost).
template <class T>
void require_array(const py::array& a, const char* name) {
  require(py::isinstance<py::array_t<T>>(a), std::string(name) + " has the wrong dtype");
  require(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous");
}

template <class T>
const T* input(const py::array& a, const char* name) {
  require_array<T>(a, name);
  return static_cast<const T*>(a.data());
}

template <class T>
T* output(py::array& a, const char* name) {
  require_array<T>(a, name);
  require(a.writeable(), std::string(name) + " must be writeable");
  return static_cast<T*>(a.mutable_data());
}

const Tile* tile_rows(const py::array& tiles) {
  const auto* data = input<int64_t>(tiles, "tiles");
  require(tiles.ndim() == 2 && tiles.shape(1) == 6, "tiles must have shape (n, 6)");
  return reinterpret_cast<const Tile*>(data);
}

Layout parse_layout(const std::string& layout) {
  if (layout == "NHWC") return Layout::kNHWC;
  require(layout == "NCHW", "layout must be 'NHWC' or 'NCHW', got '" + layout + "'");
  return Layout::kNCHW;
}

unetrt::FrameView frame_view(const py::array& frame) {
  require(frame.ndim() == 2 || frame.ndim() == 3, "frame must have shape (H, W) or (H, W, C)");
  unetrt::FrameView view{nullptr, unetrt::DType::kUint8, frame.shape(0), frame.shape(1),
                         frame.ndim() == 3 ? frame.shape(2) : 1};
  if (py::isinstance<py::array_t<uint8_t>>(frame)) {
    view.data = input<uint8_t>(frame, "frame");
  } else if (py::isinstance<py::array_t<uint16_t>>(frame)) {
    view.data = input<uint16_t>(frame, "frame");
    view.dtype = unetrt::DType::kUint16;
  } else {
    view.data = input<float>(frame, "frame");
    view.dtype = unetrt::DType::kFloat32;
  }
  return view;
}

// Shape of a batch of n tiles of tile_h x tile_w with `channels` channels.
std::vector<py::ssize_t> batch_shape(py::ssize_t n, py::ssize_t tile_h, py::ssize_t tile_w,
                                     py::ssize_t channels, Layout layout) {
  if (layout == Layout::kNHWC) return {n, tile_h, tile_w, channels};
  return {n, channels, tile_h, tile_w};
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// Tile outputs as a TileBatch; `tiles` gives n.
unetrt::TileBatch tile_batch(const py::array& outputs, py::ssize_t n, Layout layout) {
  const float* data = input<float>(outputs, "tile_outputs");
  require(outputs.ndim() == 4 && outputs.shape(0) == n,
          "tile_outputs must have shape (n, ..) with one entry per tile");
  const bool nhwc = layout == Layout::kNHWC;
  return unetrt::TileBatch{data,
                           n,
                           outputs.shape(nhwc ? 1 : 2),
                           outputs.shape(nhwc ? 2 : 3),
                           outputs.shape(nhwc ? 3 : 1),
                           layout};
}

// A state map of shape (rows, cols, K) or (K, rows, cols) as a StateMap.
unetrt::StateMap state_map(const py::array& map, int64_t stride, Layout layout) {
  require(map.ndim() == 3, "state map must be 3-D");
  const bool nhwc = layout == Layout::kNHWC;
  return unetrt::StateMap{map.shape(nhwc ? 0 : 1), map.shape(nhwc ? 1 : 2),
                          map.shape(nhwc ? 2 : 0), stride, layout};
}

}  // namespace

#ifdef UNETRT_WITH_CUDA
void bind_cuda(py::module_& m);  // cpp/bindings/cuda.cpp
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "unetrt C++ core: tile planning, normalization, stitching, masks";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const unetrt::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def("build_info", [] {
    py::dict info;
    info["version"] = UNETRT_VERSION;
#ifdef UNETRT_WITH_CUDA
    info["cuda"] = true;
    info["cuda_devices"] = unetrt::cuda::device_count();
#else
    info["cuda"] = false;
    info["cuda_devices"] = 0;
#endif
    info["compiler"] = unetrt::compiler();
    info["hardware_threads"] = unetrt::hardware_threads();
    return info;
  });

  // Runtime state, not a build fact, so not part of build_info().
  m.def("pool_threads", &unetrt::pool_threads, py::call_guard<py::gil_scoped_release>(),
        "Worker threads the core's thread pool has now (0 before its first parallel call).");

  m.def(
      "plan_tiles",
      [](int64_t height, int64_t width, int64_t alignment, int64_t halo, int64_t max_tile_h,
         int64_t max_tile_w, bool fixed) {
        const unetrt::TilePlan plan =
            unetrt::plan_tiles(height, width, alignment, halo, max_tile_h, max_tile_w, fixed);
        py::array_t<int64_t> tiles({static_cast<py::ssize_t>(plan.tiles.size()), py::ssize_t{6}});
        std::memcpy(tiles.mutable_data(), plan.tiles.data(), plan.tiles.size() * sizeof(Tile));
        return py::make_tuple(plan.tile_h, plan.tile_w, plan.padded_h, plan.padded_w, tiles);
      },
      py::arg("height"), py::arg("width"), py::arg("alignment"), py::arg("halo"),
      py::arg("max_tile_h"), py::arg("max_tile_w"), py::arg("fixed"),
      "(tile_h, tile_w, padded_h, padded_w, tiles (n, 6) int64) for a frame.");

  m.def(
      "extract_tiles",
      [](const py::array& frame, const py::array& tiles, int64_t tile_h, int64_t tile_w,
         float scale, float offset, float lo, float hi, const std::string& layout,
         py::array& out, int threads) {
        const unetrt::FrameView view = frame_view(frame);
        const Tile* rows = tile_rows(tiles);
        const Layout lay = parse_layout(layout);
        float* dst = output<float>(out, "out");
        require(shape_of(out) == batch_shape(tiles.shape(0), tile_h, tile_w, view.channels, lay),
                "out must have shape (n, tile_h, tile_w, C) or (n, C, tile_h, tile_w)");
        py::gil_scoped_release release;
        unetrt::extract_tiles(view, rows, tiles.shape(0), tile_h, tile_w,
                              unetrt::Affine{scale, offset, lo, hi}, lay, dst, threads);
      },
      py::arg("frame"), py::arg("tiles"), py::arg("tile_h"), py::arg("tile_w"), py::arg("scale"),
      py::arg("offset"), py::arg("lo"), py::arg("hi"), py::arg("layout"), py::arg("out"),
      py::arg("threads"),
      "Write normalized, reflect-padded tile windows of a frame into out (float32).");

  m.def(
      "normalize",
      [](const py::array& frame, float scale, float offset, float lo, float hi, py::array& out,
         int threads) {
        const unetrt::FrameView view = frame_view(frame);
        float* dst = output<float>(out, "out");
        require(shape_of(out) == shape_of(frame), "out must have the frame's shape");
        py::gil_scoped_release release;
        unetrt::normalize(view, unetrt::Affine{scale, offset, lo, hi}, dst, threads);
      },
      py::arg("frame"), py::arg("scale"), py::arg("offset"), py::arg("lo"), py::arg("hi"),
      py::arg("out"), py::arg("threads"),
      "out = clip(frame * scale + offset, lo, hi) in float32.");

  m.def(
      "stitch_crop",
      [](const py::array& tile_outputs, const py::array& tiles, py::array& dst,
         const std::string& layout, int threads) {
        const Tile* rows = tile_rows(tiles);
        const unetrt::TileBatch batch =
            tile_batch(tile_outputs, tiles.shape(0), parse_layout(layout));
        float* d = output<float>(dst, "dst");
        require(dst.ndim() == 3 && dst.shape(2) == batch.channels,
                "dst must have shape (H, W, K) with K the tile output channels");
        py::gil_scoped_release release;
        unetrt::stitch_crop(batch, rows, d, dst.shape(0), dst.shape(1), threads);
      },
      py::arg("tile_outputs"), py::arg("tiles"), py::arg("dst"), py::arg("layout"),
      py::arg("threads"), "Copy each tile's core into dst (H, W, K).");

  m.def(
      "stitch_blend",
      [](const py::array& tile_outputs, const py::array& tiles, const py::array& weights,
         py::array& acc, py::array& weight_sum, const std::string& layout, int threads) {
        const Tile* rows = tile_rows(tiles);
        const unetrt::TileBatch batch =
            tile_batch(tile_outputs, tiles.shape(0), parse_layout(layout));
        const float* w = input<float>(weights, "weights");
        require(shape_of(weights) == std::vector<py::ssize_t>{batch.tile_h, batch.tile_w},
                "weights must have shape (tile_h, tile_w)");
        float* a = output<float>(acc, "acc");
        float* ws = output<float>(weight_sum, "weight_sum");
        require(acc.ndim() == 3 && acc.shape(2) == batch.channels,
                "acc must have shape (H, W, K) with K the tile output channels");
        require(shape_of(weight_sum) == std::vector<py::ssize_t>{acc.shape(0), acc.shape(1)},
                "weight_sum must have shape (H, W)");
        py::gil_scoped_release release;
        unetrt::stitch_blend(batch, rows, w, a, ws, acc.shape(0), acc.shape(1), threads);
      },
      py::arg("tile_outputs"), py::arg("tiles"), py::arg("weights"), py::arg("acc"),
      py::arg("weight_sum"), py::arg("layout"), py::arg("threads"),
      "Add weighted whole windows into acc (H, W, K) and the weights into weight_sum (H, W).");

  m.def(
      "finish_blend",
      [](py::array& acc, const py::array& weight_sum, int threads) {
        float* a = output<float>(acc, "acc");
        const float* ws = input<float>(weight_sum, "weight_sum");
        require(acc.ndim() == 3 &&
                    shape_of(weight_sum) == std::vector<py::ssize_t>{acc.shape(0), acc.shape(1)},
                "acc must be (H, W, K) and weight_sum (H, W)");
        py::gil_scoped_release release;
        unetrt::finish_blend(a, ws, acc.shape(0) * acc.shape(1), acc.shape(2), threads);
      },
      py::arg("acc"), py::arg("weight_sum"), py::arg("threads"),
      "acc /= weight_sum[..., None], in place.");

  m.def(
      "taper_weights",
      [](int64_t tile_h, int64_t tile_w) {
        require(tile_h >= 1 && tile_w >= 1, "tile size must be positive");
        py::array_t<float> out(
            {static_cast<py::ssize_t>(tile_h), static_cast<py::ssize_t>(tile_w)});
        unetrt::taper_weights(tile_h, tile_w, out.mutable_data());
        return out;
      },
      py::arg("tile_h"), py::arg("tile_w"),
      "Gaussian taper (tile_h, tile_w): sigma T/8, peak 1, floor 1e-3.");

  m.def(
      "threshold_mask",
      [](const py::array& prob, float threshold, py::array& out, int threads) {
        const float* p = input<float>(prob, "prob");
        uint8_t* o = output<uint8_t>(out, "out");
        require(shape_of(out) == shape_of(prob), "out must have the shape of prob");
        py::gil_scoped_release release;
        unetrt::threshold_mask(p, prob.size(), threshold, o, threads);
      },
      py::arg("prob"), py::arg("threshold"), py::arg("out"), py::arg("threads"),
      "out = 255 where prob > threshold else 0 (uint8).");

  m.def(
      "cut_states",
      [](const py::array& map, const py::array& tiles, int64_t stride, int64_t tile_h,
         int64_t tile_w, const std::string& layout, py::array& out, int threads) {
        const Tile* rows = tile_rows(tiles);
        const Layout lay = parse_layout(layout);
        const unetrt::StateMap shape = state_map(map, stride, lay);
        const float* src = input<float>(map, "map");
        float* dst = output<float>(out, "out");
        require(stride >= 1 && tile_h % stride == 0 && tile_w % stride == 0,
                "tile size must be a multiple of the stride");
        require(shape_of(out) == batch_shape(tiles.shape(0), tile_h / stride, tile_w / stride,
                                             shape.channels, lay),
                "out must hold one state window per tile");
        py::gil_scoped_release release;
        unetrt::cut_states(src, shape, rows, tiles.shape(0), tile_h, tile_w, dst, threads);
      },
      py::arg("map"), py::arg("tiles"), py::arg("stride"), py::arg("tile_h"), py::arg("tile_w"),
      py::arg("layout"), py::arg("out"), py::arg("threads"),
      "Cut each tile's state window from a state map into out.");

  m.def(
      "stitch_states",
      [](const py::array& states, const py::array& tiles, int64_t stride, int64_t tile_h,
         int64_t tile_w, int64_t height, int64_t width, int64_t padded_h, int64_t padded_w,
         const std::string& layout, py::array& map, int threads) {
        const Tile* rows = tile_rows(tiles);
        const Layout lay = parse_layout(layout);
        const unetrt::StateMap shape = state_map(map, stride, lay);
        const float* src = input<float>(states, "states");
        float* dst = output<float>(map, "map");
        require(stride >= 1 && tile_h % stride == 0 && tile_w % stride == 0,
                "tile size must be a multiple of the stride");
        require(shape_of(states) == batch_shape(tiles.shape(0), tile_h / stride,
                                                tile_w / stride, shape.channels, lay),
                "states must hold one state window per tile");
        py::gil_scoped_release release;
        unetrt::stitch_states(src, shape, rows, tiles.shape(0), tile_h, tile_w, height, width,
                              padded_h, padded_w, dst, threads);
      },
      py::arg("states"), py::arg("tiles"), py::arg("stride"), py::arg("tile_h"),
      py::arg("tile_w"), py::arg("height"), py::arg("width"), py::arg("padded_h"),
      py::arg("padded_w"), py::arg("layout"), py::arg("map"), py::arg("threads"),
      "Copy each tile's state core into a state map.");

  m.def(
      "class_mask",
      [](const py::array& prob, bool independent, float threshold, py::array& out,
         int threads) {
        const float* p = input<float>(prob, "prob");
        uint8_t* o = output<uint8_t>(out, "out");
        require(prob.ndim() >= 1, "prob must have a class axis");
        const std::vector<py::ssize_t> shape = shape_of(prob);
        require(shape_of(out) == std::vector<py::ssize_t>(shape.begin(), shape.end() - 1),
                "out must have the shape of prob without its last (class) axis");
        py::gil_scoped_release release;
        unetrt::class_mask(p, out.size(), shape.back(), independent, threshold, o, threads);
      },
      py::arg("prob"), py::arg("independent"), py::arg("threshold"), py::arg("out"),
      py::arg("threads"),
      "out = the class of each pixel (uint8): argmax, or for independent sigmoid "
      "channels 1 + argmax where it passes the threshold, else 0.");

#ifdef UNETRT_WITH_CUDA
  py::module_ cuda = m.def_submodule("cuda", "CUDA buffers, streams, events and kernels");
  bind_cuda(cuda);
#endif
}
