"""decode="device": loader workers read JPEG bytes and the batch is decoded where it trains (torchvision's
decode_jpeg; nvjpeg on a GPU). Everything but the nvjpeg call runs here on the CPU, against the worker path."""
import io

import pytest
import torch
from PIL import Image

from mimzoo.data import ImageDataModule, decode_image
from mimzoo.data.folder import _reported


def photo(h: int, w: int, seed: int, fmt: str = "jpeg", mode: str = "RGB") -> bytes:
    from skimage import data

    base = Image.fromarray([data.astronaut, data.coffee, data.chelsea][seed % 3]()).resize((w, h))
    buf = io.BytesIO()
    base.convert(mode).save(buf, format=fmt, quality=92)
    return buf.getvalue()


@pytest.fixture
def photos(tmp_path):
    # shorter sides under 2 x 32: the worker decodes these at full scale (no DCT-domain reduction), as nvjpeg does
    shapes = [(60, 80), (80, 50), (62, 62), (40, 120), (60, 90)]
    for i, (h, w) in enumerate(shapes):
        (tmp_path / f"p{i}.jpg").write_bytes(photo(h, w, i))
    (tmp_path / "p5.png").write_bytes(photo(50, 70, 5, "png"))  # not a JPEG: decoded by the worker
    (tmp_path / "p6.jpg").write_bytes(photo(66, 66, 6, mode="CMYK"))  # the worker decodes CMYK with PIL
    (tmp_path / "p8.jpg").write_bytes(photo(200, 260, 8))  # the worker decodes it at 1/2 scale (OpenCV)
    good = photo(60, 60, 7)
    (tmp_path / "p7.jpg").write_bytes(good[: len(good) // 3])  # truncated: skipped and counted
    _reported.clear()
    return tmp_path


@pytest.mark.parametrize("crop", ["square", "full"])
def test_device_decode_gives_the_worker_paths_pixels(photos, crop):
    kwargs = dict(data=str(photos), val_data=str(photos), size=32, batch_size=9, num_workers=0, crop=crop)
    worker, device = ImageDataModule(**kwargs), ImageDataModule(decode="device", **kwargs)
    worker.setup("fit"), device.setup("fit")
    raw = next(iter(device.train_dataloader()))
    assert len(raw["encoded"]) == 8 and raw["image"].shape[0] == 1  # seven JPEGs + the truncated one; the PNG
    with pytest.warns(UserWarning, match="p7.jpg"):
        batch = device.on_before_batch_transfer(raw, 0)
    assert device.skipped_images == 1 and len(batch["index"]) == 8
    files = device.train_files
    for b, index in enumerate(batch["index"].tolist()):
        want = decode_image(files[index], 32, full=crop == "full")
        h, w = batch["image_size"][b].tolist() if "image_size" in batch else batch["image"].shape[-2:]
        assert (h, w) == tuple(want.shape[-2:]), files[index].name
        got = batch["image"][b, :, :h, :w].float()
        diff = (got - want.float()).abs()
        # the same resize (pixel-area averaging) after the same libjpeg-turbo decode on the CPU (measured: equal
        # but for rounding, max 1 of 255); the worker's 1/2-scale DCT decode (p8) and PIL's CMYK path (p6) differ
        # more (mean 1.8-2.7, max 14-25). On a GPU, nvjpeg's IDCT adds its own small differences.
        bound = (3.0, 32) if files[index].name in ("p6.jpg", "p8.jpg") else (0.01, 1)
        assert diff.mean() < bound[0] and diff.max() <= bound[1], (files[index].name, diff.mean(), diff.max())
    val = device.on_before_batch_transfer(next(iter(device.val_dataloader())), 0)
    assert val["image"].shape[-2:] == (32, 32) and "image_size" not in val


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decodes_a_batch_on_the_gpu(photos):
    from mimzoo.data.device_decode import decode_on

    files = sorted(photos.glob("p[0-4].jpg"))
    out = decode_on([f.read_bytes() for f in files], [str(f) for f in files], torch.device("cuda"), 32, False)
    for f, im in zip(files, out):
        assert im.is_cuda and im.shape == (3, 32, 32)
        assert (im.cpu().float() - decode_image(f, 32).float()).abs().mean() < 1


def test_device_decode_from_shards(tmp_path):
    import webdataset as wds

    shard = tmp_path / "images-000.tar"
    raw = [photo(60, 80, i) for i in range(4)] + [photo(50, 70, 4, "png")]
    with wds.TarWriter(str(shard)) as sink:
        for i, data in enumerate(raw):
            sink.write({"__key__": f"s{i}", "png" if i == 4 else "jpg": data})
    dm = ImageDataModule(data=str(shard), size=32, batch_size=5, num_workers=0, shuffle_buffer=0, decode="device")
    dm.setup("fit")
    loaded = next(iter(dm.train_dataloader()))
    assert len(loaded["encoded"]) == 4 and loaded["image"].shape[0] == 1
    batch = dm.on_before_batch_transfer(loaded, 0)
    assert batch["image"].shape[0] == 5 and dm.skipped_images == 0
    worker = ImageDataModule(data=str(shard), size=32, batch_size=5, num_workers=0, shuffle_buffer=0)
    worker.setup("fit")
    plain = next(iter(worker.train_dataloader()))
    order = {i: b for b, i in enumerate(plain["index"].tolist())}
    for b, index in enumerate(batch["index"].tolist()):
        h, w = batch["image_size"][b].tolist()
        diff = batch["image"][b, :, :h, :w].float() - plain["image"][order[index], :, :h, :w].float()
        assert diff.abs().max() <= 1, index  # the same libjpeg-turbo decode on the CPU; rounding
