"""Dense downstream data: NYUv2 depth (and normals), ADE20K segmentation, Taskonomy surface normals and a built-in
real stereo sample, read from the layouts these datasets are distributed in. One module per dataset; the
datamodule reads the table `DATASETS` (see docs/contributing.md to add one)."""
from .ade20k import ADE20K_NUM_CLASSES, ade20k_dataset, list_ade20k
from .common import (
                     IGNORE_INDEX,
                     TARGET_KEYS,
                     DenseCollate,
                     DenseDataset,
                     DenseSample,
                     DenseSource,
                     center_box,
                     resize_nearest,
)
from .datamodule import DATASETS, DenseDataModule
from .nyuv2 import list_nyuv2, nyuv2_dataset, nyuv2_layout
from .stereo_sample import StereoSampleDataset, stereo_boxes, stereo_depth
from .taskonomy import list_taskonomy, taskonomy_buildings, taskonomy_dataset, taskonomy_split

__all__ = ["ADE20K_NUM_CLASSES", "IGNORE_INDEX", "TARGET_KEYS", "DATASETS", "DenseCollate", "DenseDataModule",
           "DenseDataset", "DenseSample", "DenseSource", "StereoSampleDataset", "ade20k_dataset", "center_box",
           "list_ade20k", "list_nyuv2", "list_taskonomy", "nyuv2_dataset", "nyuv2_layout", "resize_nearest",
           "stereo_boxes", "stereo_depth", "taskonomy_buildings", "taskonomy_dataset", "taskonomy_split"]
