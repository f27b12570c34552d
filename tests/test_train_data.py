"""Training data: every layout from small synthetic files, the real U373 and ISBI data,
targets, and the foreground-biased patch sampler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

# The datasets are Keras PyDatasets: without the train extra this module skips.
pytest.importorskip("keras", reason="training data needs the train extra (keras)")

from unetrt.errors import ConfigError, InputError  # noqa: E402
from unetrt.normalize import Normalization  # noqa: E402
from unetrt.train.augment import AugmentConfig  # noqa: E402
from unetrt.train.data import (  # noqa: E402
    FrameDataset,
    PatchDataset,
    PatchSampler,
    TargetSpec,
    build_datasets,
    ctc_mask_folder,
    frame_number,
    load_annotated,
    load_ctc,
    make_target,
    numbers_in_folder,
    split_validation,
)

DATA = Path(os.environ.get("UNETRT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
U373 = DATA / "ctc-u373-02"
ISBI = DATA / "isbi2012"
GOLD_FRAMES = [10, 17, 19, 20, 22, 26, 35, 36, 41, 49, 51, 52, 59, 74, 77, 85, 92, 106, 112]

needs_u373 = pytest.mark.skipif(
    not (U373 / "frames").is_dir(), reason=f"U373 data not found at {U373} (set UNETRT_DATA)"
)
needs_isbi = pytest.mark.skipif(
    not (ISBI / "image").is_dir(), reason=f"ISBI 2012 data not found at {ISBI} (set UNETRT_DATA)"
)


def _labels(shape: tuple[int, int], seed: int) -> np.ndarray:
    """An instance mask with two rectangular cells."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    r, c = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
    labels[r : r + 6, c : c + 6] = 1
    labels[1:4, 1:5] = 7
    return labels


def _frame(labels: np.ndarray, dtype: type = np.uint8) -> np.ndarray:
    return ((labels > 0) * 100 + 20).astype(dtype)


def _write_folder(folder: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(names, arrays, strict=True):
        tifffile.imwrite(folder / name, array, photometric="minisblack")


# ---------------------------------------------------------------------------- layouts
def test_frame_number_is_last_digit_group() -> None:
    assert frame_number("t010.tif") == 10
    assert frame_number("man_seg_2_017.tif") == 17
    assert frame_number("cell.png") is None


def test_folders_match_by_stem_and_number_and_skip_unannotated(tmp_path: Path) -> None:
    labels = [_labels((16, 20), s) for s in range(4)]
    _write_folder(
        tmp_path / "img", [f"t{i:03d}.tif" for i in range(4)], [_frame(m) for m in labels]
    )
    _write_folder(tmp_path / "msk", ["man_seg001.tif", "man_seg003.tif"], [labels[1], labels[3]])
    (video,) = load_annotated("folders", tmp_path / "img", tmp_path / "msk")
    assert video.numbers == (0, 1, 2, 3)
    assert sorted(video.masks) == [1, 3]
    np.testing.assert_array_equal(video.masks[3], labels[3])
    np.testing.assert_array_equal(video.frames[1], _frame(labels[1]))


def test_folders_of_16_bit_png(tmp_path: Path) -> None:
    import imageio.v3 as iio

    labels = _labels((12, 12), 0)
    for folder in ("img", "msk"):
        (tmp_path / folder).mkdir()
    iio.imwrite(tmp_path / "img" / "a.png", _frame(labels, np.uint16) * 300)
    iio.imwrite(tmp_path / "msk" / "a.png", (labels > 0).astype(np.uint8) * 255)
    (video,) = load_annotated("folders", tmp_path / "img", tmp_path / "msk")
    assert video.frames[0].dtype == np.uint16
    np.testing.assert_array_equal(video.masks[0] > 0, labels > 0)


def test_folders_without_any_match_name_the_folders(tmp_path: Path) -> None:
    _write_folder(tmp_path / "img", ["a.tif"], [np.zeros((8, 8), np.uint8)])
    _write_folder(tmp_path / "msk", ["b.tif"], [np.zeros((8, 8), np.uint8)])
    with pytest.raises(InputError, match="no mask in .*msk"):
        load_annotated("folders", tmp_path / "img", tmp_path / "msk")


def test_mask_of_wrong_shape_names_the_file(tmp_path: Path) -> None:
    _write_folder(tmp_path / "img", ["t0.tif"], [np.zeros((8, 8), np.uint8)])
    _write_folder(tmp_path / "msk", ["t0.tif"], [np.zeros((8, 9), np.uint8)])
    with pytest.raises(InputError, match=r"msk/t0.tif: mask shape \(8, 9\)"):
        load_annotated("folders", tmp_path / "img", tmp_path / "msk")


def test_stack_and_mask_stack(tmp_path: Path) -> None:
    labels = np.stack([_labels((16, 16), s) for s in range(5)])
    tifffile.imwrite(tmp_path / "movie.tif", _frame(labels, np.uint16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "movie_masks.tif", labels, photometric="minisblack")
    (video,) = load_annotated(
        "stacks", tmp_path / "movie.tif", tmp_path / "movie_masks.tif", exclude_frames=[2]
    )
    assert len(video.frames) == 5 and sorted(video.masks) == [0, 1, 3, 4]
    assert video.frames[0].dtype == np.uint16


def test_folders_of_stacks_matched_by_name(tmp_path: Path) -> None:
    for name in ("a", "b"):
        labels = np.stack([_labels((8, 12), s) for s in range(3)])
        _write_folder(tmp_path / "inputs", [f"{name}.tif"], [_frame(labels)])
        _write_folder(tmp_path / "labels", [f"{name}.tif"], [labels])
    videos = load_annotated("stacks", tmp_path / "inputs", tmp_path / "labels")
    assert [v.name for v in videos] == ["a", "b"]
    assert all(len(v.frames) == 3 for v in videos)


def test_stack_shape_mismatch_is_an_input_error(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="m.tif"):
        load_annotated("stacks", tmp_path / "s.tif", tmp_path / "m.tif")


def test_ctc_sequence_prefers_silver_truth(tmp_path: Path) -> None:
    labels = [_labels((16, 16), s) for s in range(3)]
    _write_folder(tmp_path / "01", [f"t{i:03d}.tif" for i in range(3)], [_frame(m) for m in labels])
    _write_folder(tmp_path / "01_GT" / "SEG", ["man_seg001.tif"], [labels[1]])
    assert ctc_mask_folder(tmp_path / "01") == tmp_path / "01_GT" / "SEG"
    _write_folder(tmp_path / "01_ST" / "SEG", ["man_seg000.tif", "man_seg002.tif"], labels[::2])
    (video,) = load_annotated("ctc", tmp_path / "01")
    assert sorted(video.masks) == [0, 2]
    (gold,) = load_ctc(tmp_path / "01", tmp_path / "01_GT" / "SEG")
    assert sorted(gold.masks) == [1]


def test_ctc_flat_layout_and_exclusion_by_folder(tmp_path: Path) -> None:
    labels = [_labels((16, 16), s) for s in range(4)]
    _write_folder(
        tmp_path / "frames", [f"t{i:03d}.tif" for i in range(4)], [_frame(m) for m in labels]
    )
    _write_folder(tmp_path / "silver_truth", [f"man_seg{i:03d}.tif" for i in range(4)], labels)
    _write_folder(tmp_path / "gold_truth", ["man_seg002.tif"], [labels[2]])
    exclude = numbers_in_folder(tmp_path / "gold_truth")
    (video,) = load_annotated("ctc", tmp_path, exclude_frames=exclude)
    assert exclude == [2] and sorted(video.masks) == [0, 1, 3]


def test_missing_ctc_masks_name_the_places_looked(tmp_path: Path) -> None:
    _write_folder(tmp_path / "02", ["t000.tif"], [np.zeros((8, 8), np.uint8)])
    with pytest.raises(InputError, match="02_ST"):
        load_annotated("ctc", tmp_path / "02")


def test_seed_csv_groups_frames_into_videos(tmp_path: Path) -> None:
    labels = [_labels((16, 16), s) for s in range(5)]
    _write_folder(
        tmp_path / "inputs", [f"raw_{i:03d}.tif" for i in range(1, 6)], [_frame(m) for m in labels]
    )
    _write_folder(tmp_path / "labels", [f"instance_ids_{i:03d}.tif" for i in range(1, 6)], labels)
    rows = ["Video; Frame", "vidA;raw_001.tif", "vidA;raw_002.tif", "vidA;raw_003.tif"]
    rows += ["vidB;raw_004.tif", "vidB;raw_005.tif"]
    (tmp_path / "videos2im_relation.csv").write_text("\n".join(rows) + "\n")
    videos = load_annotated("seed_csv", tmp_path)
    assert [(v.name, v.numbers) for v in videos] == [("vidA", (1, 2, 3)), ("vidB", (4, 5))]
    np.testing.assert_array_equal(videos[1].masks[0], labels[3])


def test_seed_layout_without_csv_gives_single_frames(tmp_path: Path) -> None:
    labels = [_labels((16, 16), s) for s in range(2)]
    _write_folder(tmp_path / "inputs", ["raw_000.tif", "raw_001.tif"], [_frame(m) for m in labels])
    _write_folder(tmp_path / "labels", ["instance_ids_000.tif", "instance_ids_001.tif"], labels)
    videos = load_annotated("seed_csv", tmp_path)
    assert [len(v.frames) for v in videos] == [1, 1]


def test_seed_csv_naming_a_missing_frame(tmp_path: Path) -> None:
    _write_folder(tmp_path / "inputs", ["raw_000.tif"], [np.zeros((8, 8), np.uint8)])
    _write_folder(tmp_path / "labels", ["instance_ids_000.tif"], [np.ones((8, 8), np.uint8)])
    (tmp_path / "videos2im_relation.csv").write_text("Video; Frame\nv;raw_009.tif\n")
    with pytest.raises(InputError, match="raw_009.tif"):
        load_annotated("seed_csv", tmp_path)


def test_bad_layout_and_excluding_everything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'tiff'"):
        load_annotated("tiff", tmp_path)
    labels = _labels((8, 12), 0)
    _write_folder(tmp_path / "img", ["t0.tif"], [_frame(labels)])
    _write_folder(tmp_path / "msk", ["t0.tif"], [labels])
    with pytest.raises(InputError, match="excluded"):
        load_annotated("folders", tmp_path / "img", tmp_path / "msk", exclude_frames=[0])


def test_split_validation_holds_out_the_end_of_each_video(tmp_path: Path) -> None:
    labels = np.stack([_labels((8, 12), s) for s in range(10)])
    tifffile.imwrite(tmp_path / "s.tif", _frame(labels), photometric="minisblack")
    tifffile.imwrite(tmp_path / "m.tif", labels, photometric="minisblack")
    videos = load_annotated("stacks", tmp_path / "s.tif", tmp_path / "m.tif")
    train, val = split_validation(videos, 0.2)
    assert sorted(train[0].masks) == list(range(8)) and sorted(val[0].masks) == [8, 9]
    with pytest.raises(ConfigError, match="data_val_fraction"):
        split_validation(videos, 1.0)


# ------------------------------------------------------------------------- real data
@needs_u373
def test_u373_ctc_finds_115_frames_and_silver_masks_and_excludes_gold() -> None:
    (video,) = load_annotated("ctc", U373)
    assert len(video.frames) == 115 and len(video.masks) == 115
    assert video.frames[0].shape == (520, 696) and video.frames[0].dtype == np.uint8
    assert numbers_in_folder(U373 / "gold_truth") == GOLD_FRAMES
    (train,) = load_annotated("ctc", U373, exclude_frames=numbers_in_folder(U373 / "gold_truth"))
    assert len(train.frames) == 115 and len(train.masks) == 115 - 19
    assert not set(GOLD_FRAMES) & {train.numbers[i] for i in train.masks}
    (gold,) = load_annotated("ctc", U373, U373 / "gold_truth")
    assert sorted(gold.numbers[i] for i in gold.masks) == GOLD_FRAMES


@needs_isbi
def test_isbi_png_labels_255_are_foreground() -> None:
    (video,) = load_annotated("folders", ISBI / "image", ISBI / "label")
    assert len(video.frames) == 30 and len(video.masks) == 30
    mask = video.masks[0]
    assert set(np.unique(mask)) == {0, 255}
    target = make_target(mask)
    np.testing.assert_array_equal(target, (mask == 255).astype(np.uint8))


# --------------------------------------------------------------------------- targets
def test_segmentation_target_is_label_above_zero() -> None:
    labels = _labels((16, 16), 3)
    np.testing.assert_array_equal(make_target(labels), (labels > 0).astype(np.uint8))


def test_contour_target_marks_the_inner_boundary_of_each_cell() -> None:
    labels = np.zeros((12, 12), np.uint16)
    labels[2:8, 2:6] = 1
    labels[2:8, 6:10] = 2  # touches cell 1
    target = make_target(labels, "contours", contour_width=1)
    assert set(np.unique(target)) == {0, 1, 2}
    assert (target[labels == 0] == 0).all()
    assert (target[3:7, 3:5] == 1).all() and (target[2, 2:10] == 2).all()
    assert (target[3:7, 5] == 2).all() and (target[3:7, 6] == 2).all()  # the touching line
    binary = make_target((labels > 0).astype(np.uint8), "contours", contour_width=1)
    assert (binary[3:7, 5:7] == 1).all()  # one merged component: no line inside
    thick = make_target(labels, "contours", contour_width=2)
    assert (thick == 2).sum() > (target == 2).sum()
    with pytest.raises(ConfigError, match="datagen_type"):
        make_target(labels, "tips")


# ---------------------------------------------------------------------------- sampler
def _foreground_hits(sampler: PatchSampler, mask: np.ndarray, n: int = 2000) -> float:
    rng = np.random.default_rng(0)
    fg = np.flatnonzero(mask)
    hits = [mask[sampler.sample_centre(fg, mask.shape, rng)] for _ in range(n)]
    return float(np.mean(hits))


def test_sampler_hits_foreground_more_with_stronger_bias() -> None:
    mask = np.zeros((100, 100), bool)
    mask[40:50, 40:50] = True  # 1% foreground
    uniform = _foreground_hits(PatchSampler(), mask)
    medium = _foreground_hits(PatchSampler(sampling_pdf=10.0), mask)
    strong = _foreground_hits(PatchSampler(sampling_pdf=1e4), mask)
    assert uniform < 0.03 < medium < strong
    assert strong > 0.95
    # the seed's weight w: P(foreground) = w F / (w F + B)
    assert medium == pytest.approx(10 * 100 / (10 * 100 + 9900), abs=0.03)
    assert _foreground_hits(PatchSampler(foreground_probability=0.5), mask) == pytest.approx(
        0.5 + 0.5 * 0.01, abs=0.04
    )


def test_sampler_without_foreground_is_uniform_and_deterministic() -> None:
    sampler = PatchSampler(foreground_probability=1.0)
    empty = np.array([], np.int64)
    a = [sampler.sample_centre(empty, (30, 40), np.random.default_rng(5)) for _ in range(3)]
    b = [sampler.sample_centre(empty, (30, 40), np.random.default_rng(5)) for _ in range(3)]
    assert a == b and all(0 <= r < 30 and 0 <= c < 40 for r, c in a)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"sampling_pdf": 0.5}, "datagen_sampling_pdf"), ({"foreground_probability": 1.5}, "1.5")],
)
def test_sampler_rejects_bad_bias(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PatchSampler(**kwargs)


# --------------------------------------------------------------------------- batches
def _movie(tmp_path: Path, frames: int = 6, shape: tuple[int, int] = (20, 28)) -> Path:
    """A stack whose frame t has background 10 t + 5 and a cell of 200, and its masks."""
    labels = np.stack([_labels(shape, s) for s in range(frames)])
    movie = np.where(labels > 0, 200, 10 * np.arange(frames)[:, None, None] + 5).astype(np.uint8)
    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="minisblack")
    tifffile.imwrite(tmp_path / "masks.tif", labels, photometric="minisblack")
    return tmp_path


def _videos(tmp_path: Path, **kwargs: object) -> list:
    root = _movie(tmp_path, **kwargs)  # type: ignore[arg-type]
    return load_annotated("stacks", root / "movie.tif", root / "masks.tif")


def test_patch_batches_are_deterministic_per_seed_epoch_and_index(tmp_path: Path) -> None:
    import keras

    videos = _videos(tmp_path)
    make = lambda seed: PatchDataset(  # noqa: E731
        videos, patch_shape=(8, 16), batch_size=4, patches_per_frame=2, seed=seed
    )
    a, b = make(3), make(3)
    assert isinstance(a, keras.utils.PyDataset)
    assert len(a) == 2  # 6 frames in batches of 4; the last batch is filled up
    x, y = a[1]
    assert x.shape == (8, 8, 16, 1) and y.shape == (8, 8, 16, 1)
    assert x.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
    later = b[1], b[0]  # any order gives the same batches
    np.testing.assert_array_equal(later[0][0], x)
    np.testing.assert_array_equal(later[1][0], a[0][0])
    a.on_epoch_end()
    assert not np.array_equal(a[1][0], x)
    assert not np.array_equal(make(4)[1][0], x)
    with pytest.raises(IndexError):
        a[2]


def test_fixed_patches_repeat_every_epoch(tmp_path: Path) -> None:
    data = PatchDataset(_videos(tmp_path), patch_shape=(8, 8), fixed=True)
    first = data[0][0]
    data.on_epoch_end()
    np.testing.assert_array_equal(data[0][0], first)


def test_full_foreground_bias_puts_a_cell_in_every_patch(tmp_path: Path) -> None:
    videos = _videos(tmp_path, shape=(40, 40))
    data = PatchDataset(
        videos, patch_shape=(8, 8), batch_size=6, patches_per_frame=5,
        sampler=PatchSampler(foreground_probability=1.0), augment=AugmentConfig.off(),
    )  # fmt: skip
    for epoch in range(3):
        _, y = data[0]
        assert all(patch.any() for patch in y), f"epoch {epoch}: a patch without foreground"
        data.on_epoch_end()


def test_clips_end_with_the_annotated_frame_and_repeat_the_first(tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    data = PatchDataset(
        videos, patch_shape=(20, 28), batch_size=6, time_steps=3, augment=AugmentConfig.off(),
        normalization=Normalization(method="none"),
    )  # fmt: skip
    x, y = data[0]
    assert x.shape == (6, 3, 20, 28, 1) and y.shape == (6, 20, 28, 1)
    for clip, target in zip(x[..., 0], y[..., 0], strict=True):
        backgrounds = [int(frame[target == 0].min()) for frame in clip]
        t = (backgrounds[-1] - 5) // 10  # the annotated frame
        assert backgrounds == [10 * max(t - k, 0) + 5 for k in (2, 1, 0)]
        np.testing.assert_array_equal(clip[-1] == 200, target == 1)


def test_clips_need_videos(tmp_path: Path) -> None:
    labels = _labels((16, 16), 0)
    _write_folder(tmp_path / "inputs", ["raw_000.tif"], [_frame(labels)])
    _write_folder(tmp_path / "labels", ["instance_ids_000.tif"], [labels])
    with pytest.raises(InputError, match="single image"):
        PatchDataset(load_annotated("seed_csv", tmp_path), patch_shape=(8, 8), time_steps=2)


@pytest.mark.parametrize(
    ("target", "shape", "values"),
    [
        (TargetSpec("segmentation", "mask"), (12, 8, 8, 1), {0, 1}),
        (TargetSpec("segmentation", "sparse"), (12, 8, 8, 1), {0, 1}),
        (TargetSpec("contours", "sparse", contour_width=1), (12, 8, 8, 1), {0, 1, 2}),
        (TargetSpec("contours", "one_hot"), (12, 8, 8, 3), {0, 1}),
        (TargetSpec("segmentation", "mask", border_weights=(10.0, 5.0)), (12, 8, 8, 2), None),
    ],
)
def test_target_encodings(
    tmp_path: Path, target: TargetSpec, shape: tuple[int, ...], values: set[int] | None
) -> None:
    data = PatchDataset(
        _videos(tmp_path, shape=(16, 16)), patch_shape=(8, 8), batch_size=6,
        patches_per_frame=2, target=target, sampler=PatchSampler(foreground_probability=1.0),
    )  # fmt: skip
    _, y = data[0]
    assert y.shape == shape and y.dtype == np.float32
    if values is not None:
        assert set(np.unique(y)) == values
    else:
        assert set(np.unique(y[..., 0])) == {0, 1} and y[..., 1].min() > 0
    if target.encoding == "one_hot":
        np.testing.assert_array_equal(y.sum(axis=-1), 1)


def test_two_heads_target(tmp_path: Path) -> None:
    data = PatchDataset(
        _videos(tmp_path, shape=(16, 16)), patch_shape=(16, 16),
        target=TargetSpec("contours", "two_heads"), augment=AugmentConfig.off(),
    )  # fmt: skip
    _, y = data[0]
    assert set(y) == {"mask", "target"}
    assert (y["target"] <= y["mask"]).all() and y["target"].any()


def test_validation_frames_are_whole_normalized_frames_cropped_to_the_alignment(
    tmp_path: Path,
) -> None:
    from unetrt.normalize import normalize_frame

    videos = _videos(tmp_path, shape=(21, 30))
    spec = Normalization(method="mean")
    data = FrameDataset(videos, alignment=8, normalization=spec)
    assert len(data) == 6
    x, y = data[2]
    assert x.shape == (1, 16, 24, 1) and y.shape == (1, 16, 24, 1)
    expected = normalize_frame(videos[0].frames[2], spec)[:16, :24]
    np.testing.assert_array_equal(x[0, ..., 0], expected)
    np.testing.assert_array_equal(y[0, ..., 0], videos[0].masks[2][:16, :24] > 0)


def test_build_datasets_excludes_from_training_only(tmp_path: Path) -> None:
    from unetrt.train.config import MIN_STEPS_PER_EPOCH, load_config

    labels = [_labels((16, 24), s) for s in range(6)]
    _write_folder(
        tmp_path / "frames", [f"t{i:03d}.tif" for i in range(6)], [_frame(m) for m in labels]
    )
    _write_folder(tmp_path / "silver_truth", [f"man_seg{i:03d}.tif" for i in range(6)], labels)
    _write_folder(
        tmp_path / "gold_truth", ["man_seg001.tif", "man_seg004.tif"], [labels[1], labels[4]]
    )
    config = load_config(
        {"data_format": "ctc", "data_train_images": str(tmp_path),
         "data_exclude_frames": str(tmp_path / "gold_truth"),
         "data_val_images": str(tmp_path), "data_val_masks": str(tmp_path / "gold_truth"),
         "datagen_dim_size": [8, 8], "datagen_batch_size": 2, "model_pools": 2}
    )  # fmt: skip
    train, val = build_datasets(config)
    assert train.frames == 4 and len(train) == MIN_STEPS_PER_EPOCH  # one pass: 2 batches
    assert isinstance(val, FrameDataset) and val.frames == 2
    assert val[0][0].shape == (1, 16, 24, 1)
    split = load_config({**config.to_dict(), "data_val_images": None, "data_val_masks": None,
                         "data_val_fraction": 0.5, "data_val_mode": "patches"})  # fmt: skip
    train, val = build_datasets(split)
    assert train.frames == 2 and isinstance(val, PatchDataset) and val.frames == 2
    assert val.fixed and val.augment == AugmentConfig.off()


def test_frames_of_different_sizes_are_separate_images(tmp_path: Path) -> None:
    small, large = _labels((12, 12), 0), _labels((16, 20), 1)
    _write_folder(tmp_path / "img", ["a.tif", "b.tif"], [_frame(small), _frame(large)[..., None]])
    _write_folder(tmp_path / "msk", ["a.tif", "b.tif"], [small, large])
    videos = load_annotated("folders", tmp_path / "img", tmp_path / "msk")
    assert [v.frames[0].shape for v in videos] == [(12, 12), (16, 20)]
    assert all(len(v.frames) == 1 and list(v.masks) == [0] for v in videos)
