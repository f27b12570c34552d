// pybind11 glue for unetrt._core: adapts types and errors, releases the GIL.
#include <pybind11/pybind11.h>

namespace py = pybind11;

#ifndef UNETRT_VERSION
#define UNETRT_VERSION "0+unknown"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "unetrt C++ core: tile planning, normalization, stitching, masks";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = UNETRT_VERSION;
#ifdef UNETRT_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_devices"] = 0;
    return info;
  });
}
