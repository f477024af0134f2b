"""WebDataset shards under DDP and loader workers: whole shards per process and worker, a training epoch of the same
number of full batches on every process (so `len(loader)` is exact), every sample once per epoch across 2 gloo
processes, and a clear error when there are too few shards."""
import json
import pickle
import socket

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimzoo.data import ImageDataModule, PairDataModule, read_records, write_pair_shard
from mimzoo.data.shards import sample_index, train_epoch
from mimzoo.errors import ConfigError

RECORD = {"source": "v.mp4", "frame_a": 0, "frame_b": 1, "time_a": 0.0, "time_b": 1.0, "overlap": 0.6,
          "homography": np.eye(3).tolist(), "num_matches": 40, "num_inliers": 30}


def write_shards(root, sizes) -> tuple[str, list[str]]:
    """Pair shards of tiny 16 px views (the writer `mimzoo curate` uses): the brace pattern and every sample name."""
    rng, names = np.random.default_rng(0), []
    for s, n in enumerate(sizes):
        url = str(root / f"pairs-{s:03d}.tar")
        views = [(f"s{s}p{i}", *rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8), RECORD) for i in range(n)]
        write_pair_shard(url, views)
        names += [f"{url}:{key}" for key, *_ in views]
    return str(root / f"pairs-{{000..{len(sizes) - 1:03d}}}.tar"), names


def expected(names, kind) -> list[int]:
    return sorted(sample_index(n + e) for n in names for e in ((".0.jpg", ".1.jpg") if kind == "images" else ("",)))


def datamodule(kind, data, workers, **kwargs):
    cls = ImageDataModule if kind == "images" else PairDataModule
    dm = cls(data=data, size=16, batch_size=3, num_workers=workers, shuffle_buffer=5, pin_memory=False, **kwargs)
    dm.setup("fit")
    return dm


def _rank(rank, port, data, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        seen = {}
        for kind in ("images", "pairs"):
            for workers in (0, 2):
                loader = datamodule(kind, data, workers).train_dataloader()
                epochs = [[i for b in loader for i in b["index"].tolist()] for _ in range(2)]
                seen[f"{kind}/{workers}"] = {"len": len(loader), "epochs": epochs}
        try:
            datamodule("pairs", data, 5).train_dataloader()  # 2 processes x 5 workers > 8 shards
        except ConfigError as e:
            seen["error"] = str(e)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(seen, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_see_every_sample_once_per_epoch(tmp_path):
    """8 shards of 3 pairs over 2 processes (x 2 workers): each process reads its own shards, takes the same number
    of batches (len(loader)), and together they see every pair (and, read as images, every view) once, in each of
    two epochs, with a shuffle buffer."""
    data, names = write_shards(tmp_path, [3] * 8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # forked, as Lightning's DDP processes fork their loader workers (a spawned one imports mimzoo again: ~7 s each)
    mp.start_processes(_rank, args=(port, data, str(tmp_path / "seen")), nprocs=2, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"seen.{r}").read_text()) for r in range(2)]
    for kind, per_rank in (("images", 24), ("pairs", 12)):
        for workers in (0, 2):
            got = [r[f"{kind}/{workers}"] for r in ranks]
            assert [g["len"] for g in got] == [per_rank // 3] * 2, (kind, workers)
            for epoch in range(2):
                assert [len(g["epochs"][epoch]) for g in got] == [per_rank] * 2, (kind, workers, epoch)
                assert sorted(got[0]["epochs"][epoch] + got[1]["epochs"][epoch]) == expected(names, kind)
    assert "8 shard(s) for 2 process(es) x 5 loader worker(s)" in ranks[0]["error"]
    assert "write at least 10 shards or lower --data.init_args.num_workers" in ranks[0]["error"]


class Steps(L.LightningModule):
    """The smallest model that trains on the batches; it keeps the sample indices it was given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, _):
        self.seen += batch["index"].tolist()
        return (batch["image"].float().mean() - self.w) ** 2

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)  # a schedule sized as mimzoo's: from the step estimate
        return [opt], [torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, self.trainer.estimated_stepping_batches)]


@pytest.mark.parametrize("workers", [0, 2])
def test_pair_shards_have_an_exact_epoch_length_for_lightning(tmp_path, workers):
    """Unequal shards (5, 3, 4, 4 pairs): each worker's share is the fewest its shards hold, in full batches, so
    len(loader) is what Lightning runs, its step estimate (the lr schedule's length) is exact, and no pair repeats
    within an epoch."""
    data, names = write_shards(tmp_path, [5, 3, 4, 4])
    dm = datamodule("pairs", data, workers)
    per_worker = {0: 15, 2: 6}[workers]  # one worker: all 16 -> 15; two: shards 0+2 = 9, 1+3 = 7 -> 7 -> 6
    assert train_epoch(data, 3, workers, images=False) == (per_worker, max(1, workers))
    model = Steps()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    steps = per_worker * max(1, workers) // 3
    assert len(trainer.train_dataloader) == steps
    assert trainer.estimated_stepping_batches == trainer.global_step == 2 * steps
    for epoch in (model.seen[:3 * steps], model.seen[3 * steps:]):
        assert len(set(epoch)) == len(epoch) and set(epoch) <= set(expected(names, "pairs"))


def test_a_training_stream_pickles_for_spawned_workers(tmp_path):
    """Loader workers started by spawn or forkserver (ddp_spawn, Python 3.14's default) get the dataset pickled."""
    data, names = write_shards(tmp_path, [3, 3])
    for kind in ("images", "pairs"):
        ds = pickle.loads(pickle.dumps(datamodule(kind, data, 2).train_dataloader().dataset))
        assert len(ds) == len(expected(names, kind)) and len(list(ds)) == len(ds) // 2  # read here: 1 worker's share


def test_curated_shards_are_counted_from_their_records(tmp_path):
    """Real `mimzoo curate` output: the pair count each source's record holds is the epoch; a shard rewritten after
    its record (a rerun killed in between) is counted from its tar instead."""
    import cv2
    from skimage import data as photos

    from mimzoo.curate import Options, curate

    folders = []
    for y in (60, 200):  # two frame folders: a pan over the photo (overlaps ~0.7), one shard each
        folders.append(tmp_path / f"pan{y}")
        folders[-1].mkdir()
        for k, x in enumerate((0, 70, 140, 210)):
            frame = photos.astronaut()[y:y + 224, x:x + 224]
            cv2.imwrite(str(folders[-1] / f"{k}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    curate(list(map(str, folders)), tmp_path / "out", workers=1, progress=False,
           options=Options(folder_step=1, folder_offset=1))
    shards = sorted(map(str, (tmp_path / "out" / "shards").glob("*.tar")))
    pairs = [len(read_records(s)) for s in shards]
    assert len(shards) == 2 and min(pairs) > 0
    urls = "::".join(shards)
    assert train_epoch(urls, 1, 0, images=False) == (sum(pairs), 1) and train_epoch(urls, 1, 0) == (2 * sum(pairs), 1)
    write_pair_shard(shards[0], [(f"new{i}", *np.zeros((2, 16, 16, 3), np.uint8), RECORD) for i in range(3)])
    assert train_epoch(urls, 1, 0, images=False) == (3 + pairs[1], 1)


def test_too_few_shards_and_too_few_samples_are_one_line_errors(tmp_path):
    data, _ = write_shards(tmp_path, [3, 3])
    with pytest.raises(ConfigError, match=r"2 shard\(s\) for 1 process\(es\) x 3 loader worker\(s\).*write at least 3"):
        datamodule("pairs", data, 3).train_dataloader()
    with pytest.raises(ConfigError, match="3 item.* fewer than batch_size=4"):
        PairDataModule(data=data, size=16, batch_size=4, num_workers=2).train_dataloader()
    # validation is one pass, not an epoch of equal shares: a worker without a shard just yields nothing
    val = datamodule("pairs", data, 3, val_data=data).val_dataloader()
    assert sum(len(b["index"]) for b in val) == 6
