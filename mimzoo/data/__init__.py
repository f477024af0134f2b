"""Datamodules: the built-in sample photos, image folders and WebDataset shards, decoded to uint8."""
from .classes import ClassFolderDataModule, class_folder
from .datamodule import BaseDataModule, EpochShuffle, ImageDataModule, ResumableLoader
from .dense import (ADE20K_NUM_CLASSES, IGNORE_INDEX, DenseDataModule, DenseDataset, DenseSample, StereoSampleDataset,
                    ade20k_dataset, list_ade20k, list_nyuv2, list_taskonomy, nyuv2_dataset, nyuv2_layout, stereo_depth,
                    taskonomy_buildings, taskonomy_dataset, taskonomy_split)
from .folder import CorruptImageWarning, ImageFolderDataset, collate_images, list_images
from .images import CorruptImageError, decode_image, square_uint8
from .pairs import (PAIR_KEYS, PairDataModule, PairDataset, PairRecord, find_pairs, read_pair_csv, read_records,
                    sample_pairs, write_pair_shard)
from .sample import sample_folder, sample_images

__all__ = ["PairDataModule", "PairDataset", "PairRecord", "PAIR_KEYS", "find_pairs", "read_pair_csv", "read_records",
           "sample_pairs", "write_pair_shard", "BaseDataModule", "ImageDataModule", "ClassFolderDataModule", "class_folder", "ImageFolderDataset", "ResumableLoader", "EpochShuffle", "collate_images",
           "list_images", "decode_image", "square_uint8", "CorruptImageError", "CorruptImageWarning",
           "sample_images", "sample_folder"]
__all__ += ["ADE20K_NUM_CLASSES", "IGNORE_INDEX", "DenseDataModule", "DenseDataset", "DenseSample", "StereoSampleDataset",
            "ade20k_dataset", "list_ade20k", "list_nyuv2", "list_taskonomy", "nyuv2_dataset", "nyuv2_layout",
            "stereo_depth", "taskonomy_buildings", "taskonomy_dataset", "taskonomy_split"]
