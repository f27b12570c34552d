// pybind11 glue for unetrt._core.cuda (built only with CUDA): owners of device and
// pinned memory, streams and events, copies, and the kernel launchers. Pointers cross
// as integers (the Python layer, unetrt.gpu.device, keeps the owners alive and checks
// shapes); every call that waits or enqueues releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "unetrt/check.hpp"
#include "unetrt/cuda/kernels.hpp"
#include "unetrt/cuda/runtime.hpp"

namespace py = pybind11;
namespace cu = unetrt::cuda;
using unetrt::Layout;
using unetrt::Tile;

namespace {

template <class T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

Layout layout_of(const std::string& layout) {
  if (layout == "NHWC") return Layout::kNHWC;
  if (layout != "NCHW") throw py::value_error("layout must be 'NHWC' or 'NCHW', got '" + layout + "'");
  return Layout::kNCHW;
}

unetrt::DType dtype_of(const std::string& dtype) {
  if (dtype == "uint8") return unetrt::DType::kUint8;
  if (dtype == "uint16") return unetrt::DType::kUint16;
  if (dtype != "float32") throw py::value_error("frame dtype must be uint8, uint16 or float32");
  return unetrt::DType::kFloat32;
}

void check_contiguous(const py::array& a) {
  if (!(a.flags() & py::array::c_style)) throw py::value_error("host array must be C-contiguous");
}

// A host array's address and size to copy from (read-only arrays too: tile plans are).
std::pair<const void*, std::size_t> host_source(const py::array& a) {
  check_contiguous(a);
  return {a.data(), static_cast<std::size_t>(a.nbytes())};
}

// A host array's address and size to copy into; it must be writeable.
std::pair<void*, std::size_t> host_target(py::array& a) {
  check_contiguous(a);
  if (!a.writeable()) throw py::value_error("host array must be writeable");
  return {a.mutable_data(), static_cast<std::size_t>(a.nbytes())};
}

}  // namespace

void bind_cuda(py::module_& m) {
  using py::arg;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  py::register_exception<cu::CudaError>(m, "CudaError", PyExc_RuntimeError);
  m.def("device_count", &cu::device_count, nogil, "GPUs the CUDA runtime sees now (0 if none).");
  m.def(
      "device_properties",
      [](int index) {
        const cu::DeviceProperties p = cu::device_properties(index);
        py::dict d;
        d["name"] = p.name;
        d["compute_capability"] = std::to_string(p.major) + "." + std::to_string(p.minor);
        d["memory"] = p.memory;
        return d;
      },
      arg("index"));
  m.def("set_device", &cu::set_device, arg("index"), nogil);

  py::class_<cu::DeviceMemory>(m, "DeviceMemory")
      .def(py::init<std::size_t>(), arg("nbytes"), nogil)
      .def_property_readonly("ptr", [](const cu::DeviceMemory& d) {
        return reinterpret_cast<std::uintptr_t>(d.data());
      })
      .def_property_readonly("nbytes", &cu::DeviceMemory::bytes);

  py::class_<cu::PinnedMemory>(m, "PinnedMemory", py::buffer_protocol())
      .def(py::init<std::size_t>(), arg("nbytes"), nogil)
      .def_property_readonly("nbytes", &cu::PinnedMemory::bytes)
      .def_buffer([](cu::PinnedMemory& p) {
        return py::buffer_info(p.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(p.bytes())}, {py::ssize_t{1}});
      });

  py::class_<cu::Stream>(m, "Stream")
      .def(py::init<>())
      .def_property_readonly("handle", [](const cu::Stream& s) {
        return reinterpret_cast<std::uintptr_t>(s.handle());
      })
      .def("synchronize", &cu::Stream::synchronize, nogil);

  py::class_<cu::Event>(m, "Event")
      .def(py::init<>())
      .def("record", &cu::Event::record, arg("stream"))
      .def("wait_on", &cu::Event::wait_on, arg("stream"))
      .def("synchronize", &cu::Event::synchronize, nogil)
      .def("done", &cu::Event::done);

  m.def(
      "upload",
      [](std::uintptr_t dst, const py::array& src, const cu::Stream& stream) {
        const auto [data, bytes] = host_source(src);
        py::gil_scoped_release release;
        cu::copy(ptr<void>(dst), data, bytes, stream);
      },
      arg("dst"), arg("src"), arg("stream"), "Asynchronous copy of a host array to dst.");
  m.def(
      "download",
      [](py::array& dst, std::uintptr_t src, const cu::Stream& stream) {
        const auto [data, bytes] = host_target(dst);
        py::gil_scoped_release release;
        cu::copy(data, ptr<void>(src), bytes, stream);
      },
      arg("dst"), arg("src"), arg("stream"), "Asynchronous copy from src into a host array.");
  m.def(
      "fill",
      [](std::uintptr_t dst, int value, std::size_t nbytes, const cu::Stream& stream) {
        cu::fill(ptr<void>(dst), value, nbytes, stream);
      },
      arg("dst"), arg("value"), arg("nbytes"), arg("stream"), nogil);

  m.def(
      "extract_tiles",
      [](std::uintptr_t frame, const std::string& dtype, int64_t h, int64_t w, int64_t c,
         std::uintptr_t tiles, int64_t n, int64_t tile_h, int64_t tile_w, float scale,
         float offset, float lo, float hi, const std::string& layout, std::uintptr_t out,
         const cu::Stream& stream) {
        const unetrt::FrameView view{ptr<const void>(frame), dtype_of(dtype), h, w, c};
        const Layout lay = layout_of(layout);
        py::gil_scoped_release release;
        cu::extract_tiles(view, ptr<const Tile>(tiles), n, tile_h, tile_w,
                          unetrt::Affine{scale, offset, lo, hi}, lay, ptr<float>(out), stream);
      },
      arg("frame"), arg("dtype"), arg("height"), arg("width"), arg("channels"), arg("tiles"),
      arg("n"), arg("tile_h"), arg("tile_w"), arg("scale"), arg("offset"), arg("lo"), arg("hi"),
      arg("layout"), arg("out"), arg("stream"));
  m.def(
      "activate",
      [](std::uintptr_t data, int64_t n, int64_t tile_h, int64_t tile_w, int64_t channels,
         const std::string& layout, const cu::Stream& stream) {
        const Layout lay = layout_of(layout);
        py::gil_scoped_release release;
        cu::activate(ptr<float>(data), n, tile_h, tile_w, channels, lay, stream);
      },
      arg("data"), arg("n"), arg("tile_h"), arg("tile_w"), arg("channels"), arg("layout"),
      arg("stream"));
  m.def(
      "stitch_crop",
      [](std::uintptr_t outputs, int64_t n, int64_t tile_h, int64_t tile_w, int64_t channels,
         const std::string& layout, std::uintptr_t tiles, std::uintptr_t dst, int64_t height,
         int64_t width, const cu::Stream& stream) {
        const unetrt::TileBatch b{ptr<const float>(outputs), n, tile_h, tile_w, channels,
                                  layout_of(layout)};
        py::gil_scoped_release release;
        cu::stitch_crop(b, ptr<const Tile>(tiles), ptr<float>(dst), height, width, stream);
      },
      arg("outputs"), arg("n"), arg("tile_h"), arg("tile_w"), arg("channels"), arg("layout"),
      arg("tiles"), arg("dst"), arg("height"), arg("width"), arg("stream"));
  m.def(
      "stitch_blend",
      [](std::uintptr_t outputs, int64_t n, int64_t tile_h, int64_t tile_w, int64_t channels,
         const std::string& layout, std::uintptr_t tiles, std::uintptr_t weights,
         std::uintptr_t acc, std::uintptr_t weight_sum, int64_t height, int64_t width,
         const cu::Stream& stream) {
        const unetrt::TileBatch b{ptr<const float>(outputs), n, tile_h, tile_w, channels,
                                  layout_of(layout)};
        py::gil_scoped_release release;
        cu::stitch_blend(b, ptr<const Tile>(tiles), ptr<const float>(weights), ptr<float>(acc),
                         ptr<float>(weight_sum), height, width, stream);
      },
      arg("outputs"), arg("n"), arg("tile_h"), arg("tile_w"), arg("channels"), arg("layout"),
      arg("tiles"), arg("weights"), arg("acc"), arg("weight_sum"), arg("height"), arg("width"),
      arg("stream"));
  m.def(
      "finish_blend",
      [](std::uintptr_t acc, std::uintptr_t weight_sum, int64_t pixels, int64_t channels,
         const cu::Stream& stream) {
        cu::finish_blend(ptr<float>(acc), ptr<const float>(weight_sum), pixels, channels, stream);
      },
      arg("acc"), arg("weight_sum"), arg("pixels"), arg("channels"), arg("stream"), nogil);
  m.def(
      "class_mask",
      [](std::uintptr_t prob, int64_t pixels, int64_t channels, bool independent,
         float threshold, std::uintptr_t out, const cu::Stream& stream) {
        cu::class_mask(ptr<const float>(prob), pixels, channels, independent, threshold,
                       ptr<uint8_t>(out), stream);
      },
      arg("prob"), arg("pixels"), arg("channels"), arg("independent"), arg("threshold"),
      arg("out"), arg("stream"), nogil);
  m.def(
      "count_nonfinite",
      [](std::uintptr_t data, int64_t items, std::uintptr_t count, const cu::Stream& stream) {
        cu::count_nonfinite(ptr<const float>(data), items, ptr<unsigned int>(count), stream);
      },
      arg("data"), arg("items"), arg("count"), arg("stream"), nogil);
  m.def(
      "cut_states",
      [](std::uintptr_t map, int64_t rows, int64_t cols, int64_t channels, int64_t stride,
         const std::string& layout, std::uintptr_t tiles, int64_t n, int64_t tile_h,
         int64_t tile_w, std::uintptr_t out, const cu::Stream& stream) {
        const unetrt::StateMap shape{rows, cols, channels, stride, layout_of(layout)};
        py::gil_scoped_release release;
        cu::cut_states(ptr<const float>(map), shape, ptr<const Tile>(tiles), n, tile_h, tile_w,
                       ptr<float>(out), stream);
      },
      arg("map"), arg("rows"), arg("cols"), arg("channels"), arg("stride"), arg("layout"),
      arg("tiles"), arg("n"), arg("tile_h"), arg("tile_w"), arg("out"), arg("stream"));
  m.def(
      "stitch_states",
      [](std::uintptr_t states, int64_t rows, int64_t cols, int64_t channels, int64_t stride,
         const std::string& layout, std::uintptr_t tiles, int64_t n, int64_t tile_h,
         int64_t tile_w, int64_t height, int64_t width, int64_t padded_h, int64_t padded_w,
         std::uintptr_t map, const cu::Stream& stream) {
        const unetrt::StateMap shape{rows, cols, channels, stride, layout_of(layout)};
        py::gil_scoped_release release;
        cu::stitch_states(ptr<const float>(states), shape, ptr<const Tile>(tiles), n, tile_h,
                          tile_w, height, width, padded_h, padded_w, ptr<float>(map), stream);
      },
      arg("states"), arg("rows"), arg("cols"), arg("channels"), arg("stride"), arg("layout"),
      arg("tiles"), arg("n"), arg("tile_h"), arg("tile_w"), arg("height"), arg("width"),
      arg("padded_h"), arg("padded_w"), arg("map"), arg("stream"));
}
