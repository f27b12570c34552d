"""`PatchSampler`: where training patches are centred, biased toward foreground.

Kept apart from `unetrt.train.data`, which needs Keras, because the training
configuration builds and validates a sampler and must import without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["PatchSampler"]


@dataclass(frozen=True)
class PatchSampler:
    """Chooses patch centres, biased toward foreground.

    With probability ``q`` the centre is a foreground pixel drawn uniformly, otherwise
    any pixel drawn uniformly (the patch window is then moved inside the frame).
    ``q`` is either given directly (``foreground_probability``) or follows the seed
    suite's ``datagen_sampling_pdf`` weight ``w``: every foreground pixel is ``w`` times
    as likely a centre as a background pixel, so ``w = 1`` is uniform and a large ``w``
    puts almost every centre on a cell. For a frame with ``F`` foreground and ``B``
    background pixels that is the mixture above with ``q = (w - 1) F / (w F + B)``.
    A frame without foreground always gets a uniform centre.

    Attributes:
        sampling_pdf: The seed's foreground weight ``w >= 1``.
        foreground_probability: ``q`` in [0, 1]; overrides ``sampling_pdf`` when set.
    """

    sampling_pdf: float = 1.0
    foreground_probability: float | None = None

    def __post_init__(self) -> None:
        if not self.sampling_pdf >= 1.0:
            raise ConfigError(
                f"datagen_sampling_pdf is the weight of a foreground pixel relative to a "
                f"background one and must be >= 1 (1 = uniform), got {self.sampling_pdf!r}"
            )
        p = self.foreground_probability
        if p is not None and not 0.0 <= p <= 1.0:
            raise ConfigError(f"datagen_foreground_probability must be in [0, 1], got {p!r}")

    def foreground_share(self, n_foreground: int, n_pixels: int) -> float:
        """Probability ``q`` of drawing the centre among the foreground pixels."""
        if n_foreground == 0:
            return 0.0
        if self.foreground_probability is not None:
            return self.foreground_probability
        w = self.sampling_pdf
        return (w - 1.0) * n_foreground / (w * n_foreground + (n_pixels - n_foreground))

    def sample_centre(
        self, foreground: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[int, int]:
        """Draw a patch centre (row, col).

        Args:
            foreground: Flat indices of the frame's foreground pixels.
            shape: Frame shape (rows, cols).
            rng: Source of randomness.
        """
        n_pixels = shape[0] * shape[1]
        if rng.random() < self.foreground_share(len(foreground), n_pixels):
            flat = int(foreground[rng.integers(len(foreground))])
        else:
            flat = int(rng.integers(n_pixels))
        row, col = divmod(flat, shape[1])
        return row, col
