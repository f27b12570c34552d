"""Rebuild the Keras weights of the built-in `default` model from its ONNX file.

The default model's Keras run (`training/u373_default.json`) was not kept, only its
ONNX export (`python/unetrt/models/default.onnx`). Fine-tuning (`--from default`) needs
Keras weights, so this script builds the same architecture in Keras and copies every
weight out of the ONNX graph:

- each convolution's kernel is the ONNX one (tf2onnx folded the batch norm after it into
  the kernel and a bias), transposed from OIHW to Keras HWIO; its batch-norm layer takes
  the folded bias as ``beta`` and is otherwise the identity (gamma 1, mean 0, variance
  1 - epsilon), so in inference mode the Keras model computes what the ONNX one does;
- transposed convolutions and the 1 x 1 logits are copied as they are.

It then checks Keras against ONNX Runtime on real U373 frames (largest probability
difference at most 1e-4) and writes, beside default.onnx:

- ``default.weights.h5``: the weights;
- ``default.train.json``: the training configuration that builds this architecture and
  its normalization (the recipe without its data paths).

Run from the repository root (needs unetrt[train])::

    python training/default_keras_weights.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from unetrt import Segmenter
from unetrt.io import open_frames
from unetrt.normalize import normalize_frame
from unetrt.train.config import PRETRAINED_KEYS, load_config
from unetrt.train.models import build_model

MODELS = Path(__file__).resolve().parents[1] / "python" / "unetrt" / "models"
RECIPE = Path(__file__).resolve().parent / "u373_default.json"
FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ctc-u373-02" / "frames"


def main() -> None:
    recipe = json.loads(RECIPE.read_text())
    model_keys = {k: recipe[k] for k in PRETRAINED_KEYS if k in recipe}
    cfg = load_config({"data_train_images": ".", **model_keys})
    model = build_model(cfg.model_config())
    graph = onnx.load(MODELS / "default.onnx").graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")}
    copied = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "Conv2DTranspose"):
            continue
        (node,) = [n for name, n in convs.items() if f"/{layer.name}_1/" in name]
        kernel = weights[node.input[1]].transpose(2, 3, 1, 0)  # OIHW (IOHW) -> HWIO (HWOI)
        bias = weights[node.input[2]]
        if layer.use_bias:
            layer.set_weights([kernel, bias])
        else:  # folded batch norm: the bias moves to beta, the rest is the identity
            layer.set_weights([kernel])
            bn = model.get_layer(f"{layer.name}_bn")
            ones = np.ones_like(bias)
            bn.set_weights([ones, bias, np.zeros_like(bias), ones - bn.epsilon])
        copied += 1
    assert copied == len(convs), f"copied {copied} of {len(convs)} ONNX convolutions"
    _check(model)
    model.save_weights(MODELS / "default.weights.h5")
    (MODELS / "default.train.json").write_text(json.dumps(model_keys, indent=2) + "\n")
    print(f"wrote {MODELS / 'default.weights.h5'} and default.train.json ({copied} layers)")


def _check(model: object) -> None:
    """Keras (inference mode) against ONNX Runtime on whole U373 frames."""
    with Segmenter("default", tile="auto") as seg, open_frames(FRAMES) as frames:
        worst = 0.0
        for i in (0, 40, 80):
            frame = frames.read(i)
            want = seg.predict_frame(frame)
            norm = normalize_frame(frame, seg.contract.normalization)  # as inference does
            h, w = (s - s % 8 for s in norm.shape)
            got = np.asarray(model(norm[None, :h, :w, None], training=False))[0, ..., 0]
            worst = max(worst, float(np.abs(got - want[:h, :w]).max()))
    print(f"largest |Keras - ONNX Runtime| on 3 frames: {worst:.2e}")
    assert worst <= 1e-4, worst


if __name__ == "__main__":
    main()
