#include "unetrt/check.hpp"
#include "unetrt/cuda/runtime.hpp"

namespace unetrt {
namespace cuda {

void fail(cudaError_t error, const char* call, const char* file, int line) {
  throw CudaError(std::string("CUDA error ") + cudaGetErrorName(error) + " (" +
              cudaGetErrorString(error) + ") in " + call + " at " + file + ":" +
              std::to_string(line));
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error, say 0
    return 0;
  }
  return count;
}

DeviceProperties device_properties(int index) {
  cudaDeviceProp prop{};
  UNETRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return DeviceProperties{prop.name, prop.major, prop.minor, prop.totalGlobalMem};
}

void set_device(int index) { UNETRT_CUDA_CHECK(cudaSetDevice(index)); }

DeviceMemory::DeviceMemory(std::size_t bytes) : bytes_(bytes) {
  if (bytes > 0) UNETRT_CUDA_CHECK(cudaMalloc(&data_, bytes));
}
DeviceMemory::~DeviceMemory() {
  if (data_ != nullptr) cudaFree(data_);  // a destructor must not throw
}

PinnedMemory::PinnedMemory(std::size_t bytes) : bytes_(bytes) {
  if (bytes > 0) UNETRT_CUDA_CHECK(cudaMallocHost(&data_, bytes));
}
PinnedMemory::~PinnedMemory() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

Stream::Stream() { UNETRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
Stream::~Stream() { cudaStreamDestroy(stream_); }
void Stream::synchronize() const { UNETRT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

Event::Event() { UNETRT_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
Event::~Event() { cudaEventDestroy(event_); }
void Event::record(const Stream& stream) {
  UNETRT_CUDA_CHECK(cudaEventRecord(event_, stream.handle()));
}
void Event::wait_on(const Stream& stream) const {
  UNETRT_CUDA_CHECK(cudaStreamWaitEvent(stream.handle(), event_, 0));
}
void Event::synchronize() const { UNETRT_CUDA_CHECK(cudaEventSynchronize(event_)); }
bool Event::done() const {
  const cudaError_t status = cudaEventQuery(event_);
  if (status == cudaErrorNotReady) return false;
  UNETRT_CUDA_CHECK(status);
  return true;
}

void copy(void* dst, const void* src, std::size_t bytes, const Stream& stream) {
  UNETRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream.handle()));
}

void fill(void* dst, int value, std::size_t bytes, const Stream& stream) {
  UNETRT_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream.handle()));
}

}  // namespace cuda
}  // namespace unetrt
