"""Dense downstream data: tiny trees in each dataset's real on-disk layout (real encodings: uint16 depth PNGs at
each layout's scale, ADE20K label PNGs, Taskonomy 8-bit normals) read back to metres / class ids / unit vectors;
nearest resizing, layout errors, corrupt files, the datamodule and the built-in stereo sample."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import LightningDataModule
from PIL import Image

from mimzoo.data import (
    CorruptImageWarning,
    DenseDataModule,
    ResumableLoader,
    StereoSampleDataset,
    ade20k_dataset,
    collate_images,
    list_nyuv2,
    nyuv2_dataset,
    nyuv2_layout,
    stereo_depth,
    taskonomy_buildings,
    taskonomy_dataset,
    taskonomy_split,
)
from mimzoo.data.dense import center_box, resize_nearest, stereo_boxes
from mimzoo.data.folder import _reported

H, W = 24, 32


def write(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def blocks(values, seed: int = 0) -> np.ndarray:
    """Piecewise-constant 4x4 blocks of the given values: a label / depth map with edges everywhere."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.choice(np.asarray(values), (H // 4, W // 4)), np.ones((4, 4), dtype=np.asarray(values).dtype))


def normal_rgb(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = rng.normal(size=(H, W, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.round((n + 1) * 127.5).astype(np.uint8)


@pytest.fixture(autouse=True)
def _fresh_reports():
    _reported.clear()


# -- NYUv2 ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def nyu_multimae(tmp_path) -> Path:
    """MultiMAE's tools/prepare_nyuv2.py output: <split>/{rgb,depth,normal,mask}/data/NNNN.png, depth
    uint16(metres * 2**16 / 10)."""
    root = tmp_path / "nyu"
    for split, ids in (("train", (0, 1)), ("test", (2,))):
        for i in ids:
            name = f"{i:04d}.png"
            write(root / split / "rgb" / "data" / name, photo(i))
            depth = blocks([0.0, 1.5, 2.345, 9.87], seed=i)
            write(root / split / "depth" / "data" / name, np.uint16(depth * 2**16 / 10))
            write(root / split / "normal" / "data" / name, normal_rgb(i))
            mask = np.full((H, W), 255, np.uint8)
            mask[:, :4] = 0
            write(root / split / "mask" / "data" / name, mask)
    return root


@pytest.fixture
def nyu_bts(tmp_path) -> Path:
    """BTS: nyu_depth_v2/sync/<scene>/rgb_NNNNN.jpg + sync_depth_NNNNN.png (uint16 mm) and
    nyu_depth_v2/official_splits/test/<scene>/..."""
    root = tmp_path / "nyu_depth_v2"
    for folder, i in ((root / "sync" / "kitchen_0028a", 45), (root / "sync" / "bedroom_0004", 3),
                      (root / "official_splits" / "test" / "bathroom", 1)):
        write(folder / f"rgb_{i:05d}.jpg", photo(i), quality=95)
        write(folder / f"sync_depth_{i:05d}.png", np.uint16(blocks([0.0, 0.8, 2.345, 4.2], seed=i) * 1000))
    return root


def test_nyu_multimae_depth_reads_metres(nyu_multimae):
    assert nyuv2_layout(nyu_multimae) == "multimae"
    ds = nyuv2_dataset(nyu_multimae, "train", "depth", size=(H, W))
    assert len(ds) == 2 and len(nyuv2_dataset(nyu_multimae, "val", size=8)) == 1
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.uint8
    assert item["depth"].shape == (1, H, W) and item["depth"].dtype == torch.float32
    expected = blocks([0.0, 1.5, 2.345, 9.87], seed=0)
    assert np.abs(item["depth"][0].numpy() - expected).max() <= 10 / 2**16  # uint16 truncation: one step at most
    assert torch.equal(item["image"], torch.from_numpy(photo(0)).permute(2, 0, 1))  # native size: untouched


def test_nyu_multimae_mask_valid_zeroes_depth(nyu_multimae):
    mask = np.full((H, W), 255, np.uint8)
    mask[:, -8:] = 0
    write(nyu_multimae / "train" / "mask_valid" / "data" / "0000.png", mask)
    depth = nyuv2_dataset(nyu_multimae, "train", size=(H, W))[0]["depth"][0]
    assert (depth[:, -8:] == 0).all() and (depth[:, :-8] > 0).sum() > 0


def test_nyu_bts_depth_reads_metres(nyu_bts):
    assert nyuv2_layout(nyu_bts) == "bts"
    samples, layout = list_nyuv2(nyu_bts, "train")
    assert layout == "bts" and [s.target.name for s in samples] == ["sync_depth_00003.png", "sync_depth_00045.png"]
    item = nyuv2_dataset(nyu_bts, "train", size=(H, W))[1]
    assert np.abs(item["depth"][0].numpy() - blocks([0.0, 0.8, 2.345, 4.2], seed=45)).max() <= 1e-3
    test = nyuv2_dataset(nyu_bts, "test", size=16)
    assert len(test) == 1 and test[0]["depth"].shape == (1, 16, 16)
    # the sync folder itself as the root finds official_splits/ next to it
    assert len(nyuv2_dataset(nyu_bts / "sync", "val", size=16)) == 1


def test_nyu_normals_decode_to_unit_vectors(nyu_multimae):
    rgb = normal_rgb(0)
    rgb[0, 10] = (128, 128, 255)
    write(nyu_multimae / "train" / "normal" / "data" / "0000.png", rgb)
    normal = nyuv2_dataset(nyu_multimae, "train", "normals", size=(H, W))[0]["normal"]
    assert normal.shape == (3, H, W) and normal.dtype == torch.float32
    assert torch.allclose(normal[:, 0, 10], torch.tensor([0.0, 0.0, 1.0]), atol=0.01)
    valid = normal.norm(dim=0)
    assert (valid[:, :4] == 0).all(), "mask 0 -> invalid (all-zero)"
    assert torch.allclose(valid[:, 4:], torch.ones(H, W - 4), atol=1e-5)
    expected = rgb[:, 4:].astype(np.float32) / 127.5 - 1
    assert np.abs(normal[:, :, 4:].permute(1, 2, 0).numpy() - expected).max() < 0.02


def test_nyu_wrong_layout_names_the_accepted_layouts(tmp_path, nyu_bts):
    (tmp_path / "junk" / "images").mkdir(parents=True)
    (tmp_path / "junk" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        nyuv2_dataset(tmp_path / "junk")
    message = str(e.value)
    assert "train/rgb/data/0000.png" in message and "sync/<scene>/rgb_00000.jpg" in message
    assert "readme.txt" in message and "images/" in message
    with pytest.raises(ValueError, match="MultiMAE layout"):
        nyuv2_dataset(nyu_bts, task="normals")


def test_nyu_image_without_depth_is_named(nyu_bts):
    write(nyu_bts / "sync" / "kitchen_0028a" / "rgb_00099.jpg", photo(9))
    with pytest.raises(FileNotFoundError, match="rgb_00099.jpg.*sync_depth_00099.png"):
        nyuv2_dataset(nyu_bts)


# -- ADE20K ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def ade(tmp_path) -> Path:
    base = tmp_path / "data" / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 1)):
        for i in range(n):
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            write(base / "images" / split / f"{stem}.jpg", photo(i))
            write(base / "annotations" / split / f"{stem}.png", blocks(np.array([0, 1, 7, 150], np.uint8), seed=i))
    return tmp_path / "data"


def test_ade20k_reduces_the_zero_label(ade):
    ds = ade20k_dataset(ade, "train", size=(H, W))
    assert len(ds) == 3 and len(ade20k_dataset(ade / "ADEChallengeData2016", "val")) == 1
    mask = ds[0]["mask"]
    assert mask.shape == (H, W) and mask.dtype == torch.int64
    raw = blocks(np.array([0, 1, 7, 150], np.uint8), seed=0)
    expected = np.select([raw == 0, raw == 1, raw == 7, raw == 150], [255, 0, 6, 149])
    assert np.array_equal(mask.numpy(), expected)
    # a palette PNG stores class ids as indices: they are read as such, never through the palette's colours
    label = Image.fromarray(blocks(np.array([0, 1, 7, 150], np.uint8), seed=1), mode="P")
    label.putpalette([255 - i % 256 for i in range(768)])
    label.save(ade / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png")
    raw = blocks(np.array([0, 1, 7, 150], np.uint8), seed=1)
    expected = np.select([raw == 0, raw == 1, raw == 7, raw == 150], [255, 0, 6, 149])
    assert np.array_equal(ds[1]["mask"].numpy(), expected)


def test_ade20k_layout_errors(ade, tmp_path):
    (ade / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_train_00000002.jpg"):
        ade20k_dataset(ade)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/images/\{training,validation\}/ADE_\*.jpg"):
        ade20k_dataset(tmp_path / "empty")


def test_nearest_resize_keeps_only_source_values(ade, nyu_multimae):
    for size in (16, (40, 56), (10, 30)):
        item = ade20k_dataset(ade, size=size)[1]
        hw = (size, size) if isinstance(size, int) else size
        assert item["image"].shape == (3, *hw) and item["mask"].shape == hw
        assert set(item["mask"].unique().tolist()) <= {255, 0, 6, 149}
        depth = nyuv2_dataset(nyu_multimae, size=size)[1]["depth"]
        source = np.uint16(blocks([0.0, 1.5, 2.345, 9.87], seed=1) * 2**16 / 10) / (2**16 / 10)
        assert set(depth.unique().tolist()) <= set(np.unique(source.astype(np.float32)).tolist())
    # interpolating across the edges would have made new values; a blended resize of this map does
    blended = np.asarray(Image.fromarray(blocks(np.array([0, 1, 7, 150], np.uint8))).resize((13, 11), Image.BILINEAR))
    assert not set(np.unique(blended)) <= {0, 1, 7, 150}


def test_resize_keeps_the_aspect_ratio():
    assert center_box(24, 32, (24, 24)) == (4.0, 0.0, 28.0, 24.0)  # centre crop, not a squeeze
    array = np.arange(H * W).reshape(H, W)
    assert np.array_equal(resize_nearest(array, (H, W), center_box(H, W, (H, W))), array)
    assert np.array_equal(resize_nearest(array, (12, 16), center_box(H, W, (12, 16))), array[::2, ::2] + W + 1)


# -- Taskonomy ------------------------------------------------------------------------------------------------------
@pytest.fixture
def taskonomy(tmp_path) -> Path:
    root = tmp_path / "taskonomy"
    for b, building in enumerate(("allensville", "beechwood", "darden")):
        for point, view in ((0, 1), (12, 3)):
            stem = f"point_{point}_view_{view}_domain"
            write(root / "rgb" / building / f"{stem}_rgb.png", photo(b * 10 + point))
            rgb = normal_rgb(b)
            rgb[2, 10] = (128, 128, 255)
            rgb[5, 6] = (128, 128, 128)
            write(root / "normal" / building / f"{stem}_normal.png", rgb)
    zbuffer = np.full((H, W), 1000, np.uint16)
    zbuffer[:, :5] = 65535
    write(root / "depth_zbuffer" / "allensville" / "point_0_view_1_domain_depth_zbuffer.png", zbuffer)
    return root


def test_taskonomy_normals_decode_and_invalid_pixels(taskonomy):
    ds = taskonomy_dataset(taskonomy, ["allensville"], size=(H, W))
    assert len(ds) == 2 and ds.samples[0].image.name == "point_0_view_1_domain_rgb.png"
    normal = ds[0]["normal"]
    assert normal.shape == (3, H, W) and normal.dtype == torch.float32
    assert torch.allclose(normal[:, 2, 10], torch.tensor([0.0, 0.0, 1.0]), atol=0.01)
    assert (normal[:, 5, 6] == 0).all(), "(128, 128, 128) marks no geometry"
    assert (normal[:, :, :5] == 0).all(), "z-buffer 65535 marks no geometry"
    norms = normal.norm(dim=0)
    assert ((norms - 1).abs() < 1e-5).sum() == H * (W - 5) - 1
    other = taskonomy_dataset(taskonomy, ["beechwood"], size=(H, W))[0]["normal"]  # no z-buffer: only 128s masked
    assert (other.norm(dim=0) == 0).sum() == 1


def test_taskonomy_buildings_and_split(taskonomy):
    assert taskonomy_buildings(taskonomy) == ["allensville", "beechwood", "darden"]
    assert len(taskonomy_dataset(taskonomy, size=8)) == 6
    assert taskonomy_split(taskonomy) == (["allensville", "beechwood"], ["darden"])  # MultiMAE's tiny val building
    assert taskonomy_split(taskonomy, ["darden"]) == (["darden"], ["beechwood"])
    with pytest.raises(ValueError, match="disjoint"):
        taskonomy_split(taskonomy, ["darden"], ["darden"])
    with pytest.raises(ValueError, match="nowhere"):
        taskonomy_dataset(taskonomy, ["nowhere"])


def test_taskonomy_layout_errors(taskonomy, tmp_path):
    (taskonomy / "normal" / "darden" / "point_12_view_3_domain_normal.png").unlink()
    with pytest.raises(FileNotFoundError, match="point_12_view_3_domain_rgb.png"):
        taskonomy_dataset(taskonomy, ["darden"])
    (tmp_path / "flat").mkdir()
    write(tmp_path / "flat" / "x.png", photo(0))
    with pytest.raises(FileNotFoundError, match=r"<root>/rgb/<building>/point_<i>_view_<j>_domain_rgb.png.*x.png"):
        taskonomy_dataset(tmp_path / "flat")


# -- corrupt files --------------------------------------------------------------------------------------------------
def test_corrupt_files_are_skipped_with_a_warning(nyu_multimae):
    rgb = nyu_multimae / "train" / "rgb" / "data" / "0001.png"
    rgb.write_bytes(rgb.read_bytes()[:60])
    (nyu_multimae / "test" / "depth" / "data" / "0002.png").write_bytes(b"")
    ds = nyuv2_dataset(nyu_multimae, size=16)
    with pytest.warns(CorruptImageWarning, match="0001.png"):
        assert ds[1] is None
    batch = collate_images([ds[0], ds[1]])
    assert batch["skipped"] == 1 and batch["depth"].shape == (1, 1, 16, 16) and batch["index"].tolist() == [0]
    with pytest.warns(CorruptImageWarning, match="empty"):
        assert nyuv2_dataset(nyu_multimae, "val", size=16)[0] is None


# -- datamodule -----------------------------------------------------------------------------------------------------
def test_datamodule_on_the_stereo_sample():
    dm = DenseDataModule(size=(32, 48), batch_size=4, num_workers=0, num_crops=8, seed=3)
    assert dm.task == "depth" and dm.num_classes is None and dm.batch_size == 4
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and len(loader) == 2
    batch = next(iter(loader))
    assert set(batch) == {"image", "depth", "index", "skipped"}
    assert batch["image"].shape == (4, 3, 32, 48) and batch["depth"].shape == (4, 1, 32, 48)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (3, 32, 48) and val["index"].tolist() == list(range(len(val["index"])))
    # a batch whose every file was corrupt still has the target key, with no rows
    empty = dm.loader_kwargs()["collate_fn"]([None, None])
    assert empty["skipped"] == 2 and empty["image"].shape == (0, 3, 32, 48) and empty["depth"].shape == (0, 1, 32, 48)


def test_datamodule_from_a_lightning_cli_config(ade, taskonomy):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    args = {"root": str(ade), "dataset": "ade20k", "size": [16, 24], "batch_size": 2, "num_workers": 0}
    cfg = parser.parse_object({"data": {"class_path": "mimzoo.data.DenseDataModule", "init_args": args}})
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, DenseDataModule) and dm.num_classes == 150 and dm.task == "segmentation"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (2, 16, 24) and batch["mask"].dtype == torch.int64
    dm = DenseDataModule("taskonomy", str(taskonomy), size=8, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert dm.task == "normals" and len(dm.train_set) == 4 and len(dm.val_set) == 2
    assert next(iter(dm.val_dataloader()))["normal"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="supports the tasks"):
        DenseDataModule("ade20k", str(ade), task="depth")
    with pytest.raises(ValueError, match="needs root"):
        DenseDataModule("nyuv2")


# -- the built-in stereo sample -------------------------------------------------------------------------------------
def test_stereo_depth_uses_the_downscaled_calibration():
    from skimage import data

    _, _, disparity = data.stereo_motorcycle()
    _, depth = stereo_depth()
    valid = np.isfinite(disparity) & (disparity > 0)
    assert np.array_equal(depth > 0, valid) and 0.5 < valid.mean()
    # scikit-image's docstring gives the calibration of its 4x downscaled copy: f 994.978 px, dx 31.086 px
    expected = 0.193001 * 994.978 / (disparity[valid] + 31.086)
    assert np.abs(depth[valid] - expected).max() < 1e-3


def test_stereo_sample_is_plausible_and_split_by_region():
    train, val = StereoSampleDataset("train", 48, seed=0, num_crops=12), StereoSampleDataset("val", 48)
    assert len(train) == 12 and len(val) == 5
    depths = torch.stack([train[i]["depth"] for i in range(len(train))] + [val[i]["depth"] for i in range(3)])
    valid = depths > 0
    assert valid.float().mean() > 0.5
    assert 2.0 < depths[valid].median() < 4.0  # the motorcycle stands ~2-3 m from the rig, the wall behind ~4-5 m
    assert depths.max() < 5.1 and depths[valid].min() > 2.0
    assert max(b[2] for b in train.boxes) <= min(b[0] for b in val.boxes), "train crops reach into val"
    assert stereo_boxes("train", 48, seed=0, num_crops=12) == train.boxes
    assert stereo_boxes("train", 48, seed=1, num_crops=12) != train.boxes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train[0]["image"].shape == (3, 48, 48) and train[0]["image"].dtype == torch.uint8


def test_fit_resize_keeps_the_whole_frame_and_pads_as_invalid(tmp_path):
    """MultiMAE's ADE20K resize: the longest side to `size`, the frame at the top left, the rest grey / ignored."""
    from PIL import Image

    from mimzoo.data import ade20k_dataset

    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/training", "annotations/training"):
        (root / sub).mkdir(parents=True)
    image = np.full((40, 80, 3), 200, np.uint8)
    labels = np.full((40, 80), 3, np.uint8)
    Image.fromarray(image).save(root / "images/training/ADE_train_00000001.jpg")
    Image.fromarray(labels).save(root / "annotations/training/ADE_train_00000001.png")
    item = ade20k_dataset(root, "train", size=32, resize="fit")[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert (item["mask"][:16] == 2).all() and (item["mask"][16:] == 255).all()
    assert (item["image"][:, 16:] == 128).all() and abs(int(item["image"][:, :16].float().mean()) - 200) <= 2
    cover = ade20k_dataset(root, "train", size=32)[0]
    assert (cover["mask"] == 2).all()  # "cover" crops the centre instead


@pytest.mark.parametrize("recipe, tree, monitor", [
    ("nyuv2_depth_dpt", "nyu_multimae", "val/delta1"),
    ("ade20k_segmentation_convnext", "ade", "val/miou"),
    ("taskonomy_normals_dpt", "taskonomy", "val/mean")])
def test_downstream_recipe_runs_end_to_end(recipe, tree, monitor, request, parity_dir, tmp_path):
    """Each paper recipe, shrunk to CPU size (2 steps, 32 px, a tiny real-format MAE encoder), trains on a tree in
    the dataset's real layout through `mimzoo fit`, validates, checkpoints and draws its predictions."""
    import csv

    from mimzoo.cli import main as cli

    root = request.getfixturevalue(tree)
    if tree == "ade":
        root = root / "ADEChallengeData2016"
    run = tmp_path / "run"
    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "downstream" / f"{recipe}.yaml"
    cli(["fit", "-c", str(recipe_path), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.log_every_n_steps", "1",
         "--trainer.default_root_dir", str(run),
         "--trainer.logger", "mimzoo.training.CSVLogger", "--trainer.logger.save_dir", str(run),
         "--model.init_args.weights", str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth"),
         "--model.init_args.hooks", "null", "--model.init_args.image_size", "32",
         "--model.init_args.picture_every_n_epochs", "1", "--data.init_args.root", str(root),
         "--data.init_args.size", "32", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]
        + (["--data.init_args.train_size", "[32, 40]"] if tree == "nyu_multimae" else [])
        + (["--data.init_args.val_buildings", "[darden]"] if tree == "taskonomy" else []))
    assert list(run.rglob("last.ckpt")) and list(run.rglob("predictions/epoch_*.png"))
    rows = [r for path in run.rglob("metrics.csv") for r in csv.DictReader(open(path))]
    assert any(r.get(monitor) for r in rows) and any(r.get("train/loss") for r in rows)
