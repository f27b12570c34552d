"""Channel loading codes: which model input channels a multi-channel frame makes.

A training configuration's ``data_channels`` is a list of codes; each makes one model
input channel from the raw frame (H, W, C), before normalization:

- ``i``: channel ``i``;
- ``{"channel": i, "dropout": p}``: channel ``i``; in training blanked (zero after
  normalization) with probability ``p`` per sample;
- ``{"random": [i, j, ...], "inference": k}``: in training one of the listed channels,
  drawn per sample; at inference channel ``k`` (default: the first listed);
- ``{"merge": "mean" | "max", "channels": [i, j, ...], "dropout": p}``: the mean or the
  maximum of those channels; in training each is left out with probability ``p`` (one
  at least is kept, drawn at random when all were dropped), at inference all are merged.

A model contract's ``input_channels`` holds their inference form (`inference_codes`:
channel indices and merges, no dropout). Training and inference call the same
`select_channels`; training first resolves its draws per sample (`draw`: random picks,
merge dropout) into plain codes, and `blanked` says which channels it blanks after
normalization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, InputError

MERGES = ("mean", "max")
_KEYS = {
    "channel": {"channel", "dropout"},
    "random": {"random", "inference"},
    "merge": {"merge", "channels", "dropout"},
}


@dataclass(frozen=True)
class ChannelCode:
    """One model input channel made from raw channels (see the module docstring).

    Attributes:
        kind: ``"channel"``, ``"random"`` or ``"merge"``.
        channels: The raw channels it reads (one for ``"channel"``).
        dropout: Training-time dropout probability (``"channel"``: the blanking;
            ``"merge"``: each channel's chance to be left out).
        merge: ``"mean"`` or ``"max"`` for ``"merge"``, else None.
        inference: The channel a ``"random"`` code reads at inference.
    """

    kind: str
    channels: tuple[int, ...]
    dropout: float = 0.0
    merge: str | None = None
    inference: int | None = None

    def to_json(self) -> int | dict[str, Any]:
        """The configuration form (`parse_codes` reads it back)."""
        if self.kind == "channel":
            if not self.dropout:
                return self.channels[0]
            return {"channel": self.channels[0], "dropout": self.dropout}
        if self.kind == "random":
            return {"random": list(self.channels), "inference": self.inference}
        out: dict[str, Any] = {"merge": self.merge, "channels": list(self.channels)}
        if self.dropout:
            out["dropout"] = self.dropout
        return out

    def at_inference(self) -> ChannelCode:
        """The plain code inference uses: a random code's ``inference`` channel, no
        dropout."""
        if self.kind == "random":
            assert self.inference is not None
            return ChannelCode("channel", (self.inference,))
        return ChannelCode(self.kind, self.channels, merge=self.merge)

    def plane(self, frame: np.ndarray) -> np.ndarray:
        """This code's channel of a raw (H, W, C) frame, in its inference form."""
        if self.kind == "channel":
            return frame[..., self.channels[0]]
        if self.kind == "random":
            return frame[..., self.inference]
        values = frame[..., list(self.channels)]
        if self.merge == "max":
            return values.max(axis=-1)
        # In the frame's dtype (integers rounded): the normalization's scale depends on
        # the dtype (65535 for uint16, 1 for float), so a merged channel must keep it.
        mean = values.mean(axis=-1)
        return (np.rint(mean) if frame.dtype.kind in "biu" else mean).astype(frame.dtype)

    def draw(self, rng: np.random.Generator) -> ChannelCode:
        """The plain code one training sample uses: a random code's drawn channel, a
        merge without the channels its dropout left out (one at least kept)."""
        if self.kind == "random":
            return ChannelCode("channel", (self.channels[rng.integers(len(self.channels))],))
        if self.kind == "merge" and self.dropout:
            kept = rng.random(len(self.channels)) >= self.dropout
            if not kept.any():
                kept[rng.integers(len(self.channels))] = True
            chosen = tuple(c for c, keep in zip(self.channels, kept, strict=True) if keep)
            return ChannelCode("merge", chosen, merge=self.merge)
        return self


def _index(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: a channel is an index >= 0, got {value!r}")
    return value


def _indices(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of channel indices, got {value!r}")
    out = tuple(_index(v, where) for v in value)
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: channels {list(out)} list a channel twice")
    return out


def _probability(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{where}: dropout must be a probability in [0, 1), got {value!r}")
    return float(value)


def parse_code(spec: object, where: str = "data_channels") -> ChannelCode:
    """One code from its configuration form.

    Raises:
        ConfigError: Naming `where` and what is wrong.
    """
    if isinstance(spec, ChannelCode):
        return spec
    if not isinstance(spec, dict):
        return ChannelCode("channel", (_index(spec, where),))
    kinds = [k for k in _KEYS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where}: a channel code has one of the keys 'channel', 'random', 'merge', "
            f"got {spec!r}"
        )
    kind = kinds[0]
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} in {spec!r}; "
            f"a {kind!r} code has {', '.join(sorted(_KEYS[kind]))}"
        )
    dropout = _probability(spec.get("dropout", 0.0), where)
    if kind == "channel":
        return ChannelCode("channel", (_index(spec["channel"], where),), dropout)
    if kind == "random":
        channels = _indices(spec["random"], where)
        inference = spec.get("inference", channels[0])
        if inference is None:
            inference = channels[0]
        if _index(inference, where) not in channels:
            raise ConfigError(
                f"{where}: 'inference' channel {inference!r} is not among {list(channels)}"
            )
        return ChannelCode("random", channels, inference=inference)
    if spec["merge"] not in MERGES:
        raise ConfigError(f"{where}: 'merge' must be one of {MERGES}, got {spec['merge']!r}")
    channels = _indices(spec.get("channels"), where)
    return ChannelCode("merge", channels, dropout, merge=spec["merge"])


def parse_codes(spec: object, where: str = "data_channels") -> tuple[ChannelCode, ...]:
    """Codes from their configuration form (a non-empty list); None gives ().

    Raises:
        ConfigError: Naming `where` and the bad code.
    """
    if spec is None:
        return ()
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ConfigError(
            f"{where} must be a non-empty list of channel codes or null, got {spec!r}"
        )
    return tuple(parse_code(code, f"{where}[{i}]") for i, code in enumerate(spec))


def raw_channels(codes: Sequence[ChannelCode]) -> int:
    """Channels a raw frame needs at least (the largest index read, plus one)."""
    return max(c for code in codes for c in code.channels) + 1


def check_raw_shape(shape: tuple[int, ...], codes: Sequence[ChannelCode], label: str) -> None:
    """Raises InputError unless frames of `shape` have the channels `codes` read.

    (H, W) frames have one channel, (H, W, C) frames C.
    """
    have = shape[2] if len(shape) == 3 else 1 if len(shape) == 2 else 0
    need = raw_channels(codes)
    if not have or have < need:
        raise InputError(
            f"{label}: shape {tuple(shape)}, {have} channel{'s' if have != 1 else ''}; "
            f"the model's channel codes read channel {need - 1}, so frames need (H, W, C) "
            f"with C >= {need}"
        )


def select_channels(frame: np.ndarray, codes: Sequence[ChannelCode]) -> np.ndarray:
    """The model's channels of a raw frame: (H, W) for one code, else (H, W, len(codes)).

    Args:
        frame: Raw (H, W) or (H, W, C), as read.
        codes: The codes (`parse_codes`), or a training sample's `draw`.

    Returns:
        In the frame's dtype (a ``"mean"`` merge of integers is rounded to the nearest).
    """
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    planes = [code.plane(frame) for code in codes]
    if len(planes) == 1:
        return np.ascontiguousarray(planes[0])
    return np.stack(planes, axis=-1)


def inference_codes(codes: Sequence[ChannelCode]) -> tuple[ChannelCode, ...]:
    """The codes' inference form (`ChannelCode.at_inference`), as model contracts hold
    them."""
    return tuple(code.at_inference() for code in codes)


def draw(codes: Sequence[ChannelCode], rng: np.random.Generator) -> tuple[ChannelCode, ...]:
    """One training sample's plain codes (`ChannelCode.draw`, in order)."""
    return tuple(code.draw(rng) for code in codes)


def blanked(codes: Sequence[ChannelCode], rng: np.random.Generator) -> list[int]:
    """Which model channels a training sample blanks (``"channel"`` codes' dropout)."""
    return [
        i
        for i, code in enumerate(codes)
        if code.kind == "channel" and code.dropout and rng.random() < code.dropout
    ]


def is_random(codes: Sequence[ChannelCode]) -> bool:
    """Whether training draws something before normalization (random picks, merge
    dropout), so that each sample is normalized after its own draw."""
    return any(c.kind == "random" or (c.kind == "merge" and c.dropout) for c in codes)
