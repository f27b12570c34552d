#include "unetrt/mask.hpp"

#include "unetrt/check.hpp"
#include "unetrt/parallel.hpp"

namespace unetrt {

void threshold_mask(const float* prob, int64_t size, float threshold, uint8_t* out,
                    int threads) {
  UNETRT_CHECK(size >= 0, "size must be >= 0");
  parallel_for(size, 1, threads, [=](int64_t i0, int64_t i1) {
    // Restrict-qualified locals: uint8_t stores may alias anything, which would
    // otherwise force a reload of every operand per pixel and block vectorization.
    const float* __restrict p = prob;
    uint8_t* __restrict o = out;
    for (int64_t i = i0; i < i1; ++i) o[i] = p[i] > threshold ? 255 : 0;
  });
}

void argmax_mask(const float* prob, int64_t pixels, int64_t classes, uint8_t* out,
                 int threads) {
  UNETRT_CHECK(pixels >= 0, "pixels must be >= 0");
  UNETRT_CHECK(classes >= 1 && classes <= 256, "a uint8 mask holds at most 256 classes");
  parallel_for(pixels, classes, threads, [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* v = prob + p * classes;
      int64_t best = 0;
      for (int64_t k = 1; k < classes; ++k)
        if (v[k] > v[best]) best = k;
      out[p] = static_cast<uint8_t>(best);
    }
  });
}

}  // namespace unetrt
