"""Image data: decoding, the built-in sample photos, folders, shards and class folders; corrupt files are
skipped, counted and reported once, and never end an epoch."""
import io
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from mimzoo.data import (
    ClassFolderDataModule,
    CorruptImageError,
    CorruptImageWarning,
    ImageDataModule,
    decode_image,
    list_images,
    sample_images,
)
from mimzoo.data.folder import _reported
from mimzoo.errors import ConfigError

from tiny import tiny


def jpeg_bytes(seed: int, size=(48, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="jpeg")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    for i in range(6):
        (root / ("a" if i % 2 else "a/b") / f"img{i}.JPG").write_bytes(jpeg_bytes(i))
    (root / "notes.txt").write_text("not an image")
    good = jpeg_bytes(99)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    _reported.clear()
    return root


def test_decode_makes_square_uint8():
    img = decode_image(jpeg_bytes(0, (48, 96)), 32)
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8


def test_corrupt_image_error_names_the_file(folder):
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        decode_image(folder / "truncated.jpg", 32)
    with pytest.raises(CorruptImageError, match="empty"):
        decode_image(folder / "empty.png", 32)


def test_sample_set_is_real_photos():
    photos = sample_images()
    assert len(photos) >= 8
    names = [n for n, _ in photos]
    assert {"astronaut", "coffee", "motorcycle_left", "motorcycle_right"} <= set(names)
    assert all(a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8 for _, a in photos)


def test_folder_listing_is_recursive_filtered_and_sorted(folder):
    files = list_images(folder)
    assert [f.name for f in files] == sorted(f.name for f in files) or files == sorted(files)
    assert len(files) == 9 and not any(f.suffix == ".txt" for f in files)
    assert files == list_images(folder)


def test_empty_folder_says_what_was_searched(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no images in .*\.jpg"):
        list_images(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_files_are_skipped_counted_and_warned_once(folder, workers):
    dm = ImageDataModule(data=str(folder), size=32, batch_size=3, num_workers=workers, val_every=1000, repeats=2)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = 0
        for batch in dm.train_dataloader():  # the whole epoch completes
            batch = dm.on_before_batch_transfer(batch, 0)
            # crop="full": the whole 48 x 64 photo, shorter side decoded to 32
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 43)
            seen += len(batch["image"])
    assert seen == 12  # 6 good files x 2 repeats; 3 bad files x 2 repeats skipped
    assert dm.skipped_images == 6
    if workers == 0:  # worker processes warn on their own stderr
        messages = [str(w.message) for w in caught if issubclass(w.category, CorruptImageWarning)]
        assert len(messages) == 3 and len({m for m in messages}) == 3


def test_shards_with_a_corrupt_sample(tmp_path):
    shard = tmp_path / "shard-000.tar"
    with wds.TarWriter(str(shard)) as w:
        for i in range(5):
            w.write({"__key__": f"s{i}", "jpg": jpeg_bytes(i)})
        w.write({"__key__": "bad", "jpg": b"\xff\xd8 broken"})
    dm = ImageDataModule(data=str(shard), size=32, batch_size=3, num_workers=0, shuffle_buffer=0)
    dm.setup("fit")
    images = [b["image"] for b in dm.train_dataloader()]
    assert sum(len(i) for i in images) == 5


def test_pair_shards_give_both_views_as_images(tmp_path):
    """MAE on MIMIC pairs: each view is an independent image (MIMIC's MegaDataset)."""
    shard = tmp_path / "pairs-000.tar"
    with wds.TarWriter(str(shard)) as w:
        for i in range(3):
            w.write({"__key__": f"p{i}", "0.jpg": jpeg_bytes(i), "1.jpg": jpeg_bytes(10 + i), "json": b"{}"})
    dm = ImageDataModule(data=str(shard), size=32, batch_size=2, num_workers=0, shuffle_buffer=0)
    dm.setup("fit")
    assert sum(len(b["image"]) for b in dm.train_dataloader()) == 6


def test_full_crop_keeps_each_photo_whole_and_pads_the_batch(tmp_path):
    """crop="full": every training image keeps its extent and aspect (shorter side shrunk to `size`, never
    enlarged), a batch of different sizes is zero-padded with the true sizes beside it, validation stays square;
    crop="square" is the centre-square decode."""
    shapes = [(48, 64), (64, 40), (20, 90), (40, 40)]
    for i, shape in enumerate(shapes):
        (tmp_path / f"img{i}.jpg").write_bytes(jpeg_bytes(i, shape))
    dm = ImageDataModule(data=str(tmp_path), val_data=str(tmp_path), size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    files = {int(f.stem[3:]): f for f in dm.train_files}
    want = {0: (32, 43), 1: (51, 32), 2: (20, 90), 3: (32, 32)}  # (20, 90): not enlarged; within 3 x 32 long
    assert batch["image"].shape == (4, 3, 51, 90)
    for b, index in enumerate(batch["index"].tolist()):
        h, w = batch["image_size"][b].tolist()
        assert (h, w) == want[index], index
        assert torch.equal(batch["image"][b, :, :h, :w], decode_image(files[index], 32, full=True))
        assert not batch["image"][b, :, h:].any() and not batch["image"][b, :, :, w:].any()  # zero padding
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, 32, 32) and "image_size" not in val
    square = ImageDataModule(data=str(tmp_path), size=32, batch_size=4, num_workers=0, val_every=1000,
                             crop="square")
    square.setup("fit")
    plain = next(iter(square.train_dataloader()))
    assert plain["image"].shape == (4, 3, 32, 32) and "image_size" not in plain
    with pytest.raises(ValueError, match="crop must be"):
        ImageDataModule(crop="centre")


def test_split_is_deterministic(folder):
    a = ImageDataModule(data=str(folder), val_every=3)
    b = ImageDataModule(data=str(folder), val_every=3)
    a.setup("fit"), b.setup("fit")
    assert a.val_files == b.val_files and not set(a.val_files) & set(a.train_files)


def test_class_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):  # a landscape and a portrait photo per class
                shape = (48, 64) if i == 0 else (64, 40)
                (tmp_path / split / c / f"{i}.jpg").write_bytes(jpeg_bytes(i + len(c), shape))
    dm = ClassFolderDataModule(root=str(tmp_path), size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1] and dm.classes == ["cat", "dog"]
    # training decodes whole photos (crop="full"): shorter side 32, aspect kept, padded, true sizes beside
    sizes = batch["image_size"].tolist()
    aspects = sorted(round(h / w, 1) for h, w in sizes)
    assert all(min(h, w) == 32 for h, w in sizes) and aspects == [0.7, 0.7, 1.6, 1.6]  # 48 x 64 and 64 x 40
    assert tuple(batch["image"].shape[-2:]) == tuple(map(max, zip(*sizes)))
    val = next(iter(dm.val_dataloader()))  # evaluation: the centre square, MAE's eval transform
    assert val["image"].shape == (4, 3, 32, 32) and "image_size" not in val
    square = ClassFolderDataModule(root=str(tmp_path), size=32, batch_size=4, num_workers=0, crop="square")
    square.setup("fit")
    assert next(iter(square.train_dataloader()))["image"].shape == (4, 3, 32, 32)
    with pytest.raises(ConfigError, match="crop must be"):
        ClassFolderDataModule(root=str(tmp_path), crop="centre")

    # fine-tuning trains on those padded batches, its crops inside each photo
    model = tiny("finetune", num_classes=2, image_size=32).train()
    views = model.on_after_batch_transfer(dict(batch), 0)
    assert views["image"].shape == (4, 3, 32, 32) and "image_size" not in views
    loss = model.training_loss(views).loss
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.head.weight.grad is not None


def test_class_folder_layout_errors(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.jpg").write_bytes(jpeg_bytes(0))
    dm = ClassFolderDataModule(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="ImageNet layout"):
        ClassFolderDataModule(root=str(tmp_path / "nowhere")).setup("fit")


def test_the_fast_jpeg_path_matches_pils_and_leaves_the_rest_to_it():
    """Complete RGB / gray JPEGs decode through OpenCV (DCT-scaled when large, area-averaged), within about one
    grey level of PIL's antialiased bicubic path; truncated files, CMYK and PNG stay on PIL's path."""
    from skimage import data

    from mimzoo.data.images import fast_jpeg, full_uint8, open_image, square_uint8

    def jpeg(array, size, mode="RGB"):
        buf = io.BytesIO()
        Image.fromarray(array).convert(mode).resize(size).save(buf, format="jpeg", quality=92)
        return buf.getvalue()

    for size in ((500, 375), (1600, 1200)):
        raw = jpeg(data.coffee(), size)
        for full in (False, True):
            fast, slow = fast_jpeg(raw, 256, full), (full_uint8 if full else square_uint8)(open_image(raw), 256)
            assert fast is not None and fast.shape == slow.shape and fast.dtype == torch.uint8
            # different antialiasing filters (pixel areas vs PIL's bicubic), and DCT scaling for the large photo
            assert (fast.float() - slow.float()).abs().mean() < 2.0, (size, full)  # measured 0.9-1.6
    gray = jpeg(data.camera(), (400, 300), "L")
    assert fast_jpeg(gray, 128, False).shape == (3, 128, 128)
    assert fast_jpeg(jpeg(data.coffee(), (80, 60), "CMYK"), 32, False) is None
    assert fast_jpeg(jpeg(data.coffee(), (80, 60))[:-200], 32, False) is None  # no end marker: PIL raises
    for orientation in (3, 6, 8):  # a phone photo's EXIF rotation, as the PIL path applies it
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(data.coffee()).resize((120, 80)).save(buf, format="jpeg", exif=exif, quality=95)
        fast = fast_jpeg(buf.getvalue(), 40, True)
        slow = full_uint8(open_image(buf.getvalue()), 40)
        assert fast.shape == slow.shape and (fast.float() - slow.float()).abs().mean() < 3, orientation
