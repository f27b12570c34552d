#include "unetrt/mask.hpp"

#include "unetrt/check.hpp"
#include "unetrt/parallel.hpp"
#include "unetrt/pixel.hpp"

namespace unetrt {

void threshold_mask(const float* prob, int64_t size, float threshold, uint8_t* out,
                    int threads) {
  UNETRT_CHECK(size >= 0, "size must be >= 0");
  parallel_for(size, 1, threads, [=](int64_t i0, int64_t i1) {
    // Restrict-qualified locals: uint8_t stores may alias anything, which would
    // otherwise force a reload of every operand per pixel and block vectorization.
    const float* __restrict p = prob;
    uint8_t* __restrict o = out;
    for (int64_t i = i0; i < i1; ++i) o[i] = pixel::threshold(p[i], threshold);
  });
}

void class_mask(const float* prob, int64_t pixels, int64_t classes, bool independent,
                float threshold, uint8_t* out, int threads) {
  UNETRT_CHECK(pixels >= 0, "pixels must be >= 0");
  UNETRT_CHECK(classes >= 1 && classes <= pixel::max_mask_channels(independent),
               "a uint8 mask holds at most 256 classes (255 independent channels)");
  parallel_for(pixels, classes, threads, [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      out[p] = pixel::class_mask(prob + p * classes, classes, 1, independent, threshold);
  });
}

}  // namespace unetrt
