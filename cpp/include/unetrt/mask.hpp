// Probability maps to uint8 masks.
#pragma once

#include <cstdint>

namespace unetrt {

/// out[i] = 255 where prob[i] > threshold, else 0 (NaN gives 0).
void threshold_mask(const float* prob, int64_t size, float threshold, uint8_t* out, int threads);

/// out[p] = index of the largest of the `classes` values of pixel p (the first on
/// ties, like numpy.argmax); classes <= 256.
void argmax_mask(const float* prob, int64_t pixels, int64_t classes, uint8_t* out, int threads);

}  // namespace unetrt
