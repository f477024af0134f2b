"""MIMIC curation: multi-view training pairs from videos and frame folders (SIFT + RANSAC homography + patch
overlap), written as pair shards that `mimzoo.data.PairDataModule` reads."""
from .matching import match, overlap, patch_map, sift
from .pipeline import PRESETS, Options, curate, expand, preset_options, process, source_id

__all__ = ["curate", "Options", "PRESETS", "preset_options", "process", "expand", "source_id", "sift", "match",
           "overlap", "patch_map"]
