"""What the training package offers without the train extra (TensorFlow, Keras)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _import_without(blocked: str, module: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter, because this one has imported TensorFlow through other tests;
    # a None entry in sys.modules makes every import of that package fail.
    code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("blocked", ["tensorflow", "keras"])
def test_config_imports_without_tensorflow(blocked: str) -> None:
    result = _import_without(blocked, "unetrt.train.config")
    assert result.returncode == 0, result.stderr
    # The check itself works: the training data (Keras datasets) does need it.
    assert _import_without(blocked, "unetrt.train.data").returncode != 0


def test_model_description_imports_without_keras() -> None:
    code = (
        "import sys; sys.modules['keras'] = None; sys.modules['tensorflow'] = None; "
        "from unetrt.train.unet_config import UNetConfig, receptive_field, alignment; "
        "cfg = UNetConfig(pools=3, filters=8); "
        "print(alignment(cfg), receptive_field(cfg))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8", "51"]  # 2**3; as the shipped 3-pool model
