// The CUDA runtime as the core uses it: one checking macro, and owners for device
// memory, pinned host memory, streams and events (allocated once per plan by the
// caller, never on a hot path). Compiled only when CMake found a CUDA compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <stdexcept>
#include <string>

namespace unetrt {
namespace cuda {

/// A failed CUDA runtime call (Python: unetrt._core.cuda.CudaError).
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(cudaError_t error, const char* call, const char* file, int line);

}  // namespace cuda
}  // namespace unetrt

/// Every CUDA runtime call goes through this: a failure throws CudaError naming
/// the CUDA error, the call, the file and the line.
#define UNETRT_CUDA_CHECK(call)                                              \
  do {                                                                       \
    const cudaError_t unetrt_error_ = (call);                                \
    if (unetrt_error_ != cudaSuccess)                                        \
      ::unetrt::cuda::fail(unetrt_error_, #call, __FILE__, __LINE__);        \
  } while (0)

namespace unetrt {
namespace cuda {

/// GPUs the CUDA runtime sees now; 0 without a driver or device (never throws).
int device_count();

/// What build-engine records and checks of a GPU.
struct DeviceProperties {
  std::string name;
  int major = 0;
  int minor = 0;
  std::size_t memory = 0;
};
DeviceProperties device_properties(int index);

/// Makes `index` the current device of the calling thread.
void set_device(int index);

/// Device memory, freed with the owner.
class DeviceMemory {
 public:
  explicit DeviceMemory(std::size_t bytes);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Page-locked host memory: copies from and to it run asynchronously at full speed.
class PinnedMemory {
 public:
  explicit PinnedMemory(std::size_t bytes);
  ~PinnedMemory();
  PinnedMemory(const PinnedMemory&) = delete;
  PinnedMemory& operator=(const PinnedMemory&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// A non-blocking stream (no implicit ordering with the legacy default stream).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t handle() const { return stream_; }
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

/// An event without timing, for ordering work across streams and with the host.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(const Stream& stream);
  /// Work queued on `stream` after this waits until the event's work is done.
  void wait_on(const Stream& stream) const;
  void synchronize() const;
  bool done() const;

 private:
  cudaEvent_t event_ = nullptr;
};

/// Asynchronous copy of `bytes` on `stream` (the direction follows the pointers).
void copy(void* dst, const void* src, std::size_t bytes, const Stream& stream);

/// Asynchronous fill of `bytes` with `value` on `stream`.
void fill(void* dst, int value, std::size_t bytes, const Stream& stream);

}  // namespace cuda
}  // namespace unetrt
