"""Pair data for cross-view completion: the record format, shards, MIMIC's folders and CSV, the sample pairs."""

import cv2
import numpy as np
import pytest
import torch

from mimzoo.data import PairDataModule, find_pairs, read_pair_csv, read_records, sample_pairs, write_pair_shard
from mimzoo.data.shards import jpeg


def views(seed, size=64):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size, size, 3), dtype=np.uint8), rng.integers(0, 255, (size, size, 3), dtype=np.uint8)


def record(i):
    return {"source": "video.mp4", "frame_a": i, "frame_b": i + 30, "time_a": float(i), "time_b": i + 1.0,
            "overlap": 0.6, "homography": np.eye(3).tolist(), "num_matches": 40, "num_inliers": 30}


def test_sample_pairs_are_real_and_homographies_hold():
    pairs = sample_pairs()
    assert pairs[0][0] == "motorcycle_stereo" and len(pairs) >= 10
    for key, a, b, rec in pairs[1:]:
        assert a.shape == b.shape == (224, 224, 3) and a.dtype == np.uint8
        h = np.array(rec["homography"])
        # pixels of A mapped by H land on the same colours in B (inside the frame)
        ys, xs = np.mgrid[20:204:8, 20:204:8]
        pts = cv2.perspectiveTransform(np.stack([xs, ys], -1).reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)
        inside = (pts[:, 0] > 2) & (pts[:, 0] < 221) & (pts[:, 1] > 2) & (pts[:, 1] < 221)
        src = a[ys.reshape(-1)[inside], xs.reshape(-1)[inside]].astype(float)
        dst = b[np.round(pts[inside, 1]).astype(int), np.round(pts[inside, 0]).astype(int)].astype(float)
        assert inside.mean() > 0.3 and np.abs(src - dst).mean() < 25, key


def test_shard_round_trip_and_a_corrupt_pair(tmp_path):
    samples = [(f"p{i}", *views(i), record(i)) for i in range(4)]
    write_pair_shard(tmp_path / "pairs-000.tar", samples)
    assert not list(tmp_path.glob(".*tmp"))
    assert read_records(str(tmp_path / "pairs-000.tar")) == [record(i) for i in range(4)]
    import webdataset as wds  # a second shard with a broken view
    with wds.TarWriter(str(tmp_path / "pairs-001.tar")) as w:
        w.write({"__key__": "bad", "0.jpg": b"\xff\xd8 broken", "1.jpg": jpeg(views(9)[0]), "json": b"{}"})
        w.write({"__key__": "good", "0.jpg": jpeg(views(8)[0]), "1.jpg": jpeg(views(8)[1]), "json": b"{}"})
    dm = PairDataModule(data=str(tmp_path / "pairs-{000..001}.tar"), size=32, batch_size=2, num_workers=0,
                        shuffle_buffer=0)
    dm.setup("fit")
    got = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert sum(len(b["image"]) for b in got) == 5 and dm.skipped_images == 1
    assert got[0]["image"].dtype == torch.uint8 and got[0]["image2"].shape[1:] == (3, 32, 32)


def test_killed_writer_leaves_no_shard(tmp_path):
    def broken():
        yield "p0", *views(0), record(0)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_pair_shard(tmp_path / "pairs-000.tar", broken())
    assert list(tmp_path.iterdir()) == []


def test_mimic_layout_demon_and_csv(tmp_path):
    root = tmp_path / "MIMIC"
    for scene, n in (("Mannequin/vid1", 2), ("CO3D/seq", 1)):
        for k in range(n):
            d = root / scene / str(k)
            d.mkdir(parents=True)
            a, b = views(k)
            (d / "0000.jpg").write_bytes(jpeg(a))
            (d / "0001.jpg").write_bytes(jpeg(b))
            (d / "corresponding.npy").write_bytes(b"\x80\x04 a pickle that must never be loaded")
    demon = root / "DeMoN" / "seq7"
    demon.mkdir(parents=True)
    (demon / "0000.jpg").write_bytes(jpeg(views(5)[0]))
    (demon / "0001.jpg").write_bytes(jpeg(views(5)[1]))
    pairs = find_pairs(root)
    assert len(pairs) == 4 and all(a.name == "0000.jpg" and b.name == "0001.jpg" for a, b in pairs)
    (root / "MIMIC3M.csv").write_text("path1,path2\n" + "".join(
        f"{a.relative_to(root)},{b.relative_to(root)}\n" for a, b in pairs))
    assert read_pair_csv(root / "MIMIC3M.csv") == pairs
    dm = PairDataModule(data=str(root / "MIMIC3M.csv"), size=32, batch_size=2, num_workers=0, val_every=4)
    dm.setup("fit")
    assert len(dm.train_pairs) == 3 and len(dm.val_pairs) == 1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"image", "image2", "index"}


def test_plain_pair_folders_and_errors(tmp_path):
    for i in range(3):
        (tmp_path / f"pair{i}").mkdir()
        a, b = views(i)
        (tmp_path / f"pair{i}" / "left.png").write_bytes(jpeg(a))
        (tmp_path / f"pair{i}" / "right.png").write_bytes(jpeg(b))
    pairs = find_pairs(tmp_path)
    assert [(a.name, b.name) for a, b in pairs] == [("left.png", "right.png")] * 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="0000.jpg"):
        find_pairs(tmp_path / "empty")
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="path1 and path2"):
        read_pair_csv(bad)


def test_sample_datamodule_split_is_deterministic():
    a, b = PairDataModule(size=32, num_workers=0), PairDataModule(size=32, num_workers=0)
    a.setup("fit"), b.setup("fit")
    assert a.val_pairs == b.val_pairs and len(a.val_pairs) == 2 and not set(a.val_pairs) & set(a.train_pairs)
