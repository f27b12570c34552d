// One checking macro for the whole core: a failed condition throws
// unetrt::Error naming the condition, file and line. The binding layer turns
// unetrt::Error into Python's ValueError; Python validates user input first, so
// reaching one of these means a caller bug, and the message says where.
#pragma once

#include <stdexcept>
#include <string>

namespace unetrt {

/// Error raised by UNETRT_CHECK; carries a message with file and line.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const char* condition, const std::string& message, const char* file,
                       int line);

}  // namespace unetrt

#define UNETRT_CHECK(cond, msg)                                   \
  do {                                                            \
    if (!(cond)) ::unetrt::fail(#cond, (msg), __FILE__, __LINE__); \
  } while (0)
