"""The names training data and targets are chosen by, importable without Keras.

`unetrt.train.config` validates a configuration against these tuples and
`unetrt.train.data` acts on them; keeping them here lets the configuration be imported
(and its keys listed) without TensorFlow, and keeps config and data from importing
each other.
"""

from __future__ import annotations

__all__ = ["DATA_LAYOUTS", "ENCODINGS", "TARGETS"]

#: How annotated frames are laid out on disk (``data_format``); see `unetrt.train.data`.
#: Not to be confused with the tensor layouts ``"NHWC"`` / ``"NCHW"`` of the engine.
DATA_LAYOUTS = ("folders", "stacks", "ctc", "seed_csv")
#: What a model learns from a mask (``datagen_type``); see `unetrt.train.data.make_target`.
TARGETS = ("segmentation", "contours")
#: How a batch encodes the target for the loss; see `unetrt.train.data.TargetSpec`.
ENCODINGS = ("mask", "sparse", "one_hot", "two_heads")
