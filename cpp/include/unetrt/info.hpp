// What the core was built with, for build_info().
#pragma once

#include <string>

namespace unetrt {

/// Compiler name and version, e.g. "GCC 12.2.0".
std::string compiler();

/// Hardware threads available (std::thread::hardware_concurrency, at least 1).
int hardware_threads();

}  // namespace unetrt
