"""MIMIC curation: multi-view training pairs from videos and frame folders (SIFT + RANSAC homography + patch
overlap), written as pair shards that `mimzoo.data.PairDataModule` reads."""
from .matching import match, overlap, patch_map, sift
from .pipeline import Options, curate, expand, process, source_id

__all__ = ["curate", "Options", "process", "expand", "source_id", "sift", "match", "overlap", "patch_map"]
