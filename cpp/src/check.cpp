#include "unetrt/check.hpp"

namespace unetrt {

void fail(const char* condition, const std::string& message, const char* file, int line) {
  throw Error(message + " (check failed: " + condition + " at " + file + ":" +
              std::to_string(line) + ")");
}

}  // namespace unetrt
