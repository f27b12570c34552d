"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def unet_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net (4 filters, 2 pools) carrying its full contract (alignment 4, exact
    halo): fast, and exact under tiling. Modules that need another one define their own."""
    from unetrt.contract import ModelContract
    from unetrt.testing import save, unet_model, unet_receptive_radius

    contract = ModelContract(alignment=4, halo=unet_receptive_radius(pools=2))
    path = tmp_path_factory.mktemp("models") / "unet.onnx"
    save(unet_model(filters=4, pools=2, contract=contract), path)
    return path
