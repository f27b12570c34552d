// Probability maps to uint8 masks (the per-pixel rules are in pixel.hpp).
#pragma once

#include <cstdint>

namespace unetrt {

/// out[i] = 255 where prob[i] > threshold, else 0 (NaN gives 0).
void threshold_mask(const float* prob, int64_t size, float threshold, uint8_t* out, int threads);

/// out[p] = `pixel::class_mask` of the `classes` values of pixel p: the index of the
/// largest (the first on ties, like numpy.argmax), or for `independent` sigmoid
/// channels 1 + that index where its value passes `threshold`, else 0.
void class_mask(const float* prob, int64_t pixels, int64_t classes, bool independent,
                float threshold, uint8_t* out, int threads);

}  // namespace unetrt
