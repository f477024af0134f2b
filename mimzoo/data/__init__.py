"""Datamodules: the built-in sample photos, image folders and WebDataset shards, pairs, dense datasets, decoded to
uint8 (the methods make their views on the device)."""
from .classes import ClassFolderDataModule, class_folder
from .datamodule import BaseDataModule, EpochShuffle, ImageDataModule, ResumableLoader
from .dense import (
                    ADE20K_NUM_CLASSES,
                    DATASETS,
                    IGNORE_INDEX,
                    DenseDataModule,
                    DenseDataset,
                    DenseSample,
                    StereoSampleDataset,
                    ade20k_dataset,
                    list_ade20k,
                    list_nyuv2,
                    list_taskonomy,
                    nyuv2_dataset,
                    nyuv2_layout,
                    stereo_depth,
                    taskonomy_buildings,
                    taskonomy_dataset,
                    taskonomy_split,
)
from .folder import CorruptImageWarning, ImageFolderDataset, collate_images, list_images
from .images import CorruptImageError, decode_image, square_uint8
from .pairs import PairDataModule, PairDataset, find_pairs, read_pair_csv, sample_pairs
from .sample import sample_folder, sample_images
from .shards import PAIR_KEYS, PairRecord, is_shards, read_records, write_pair_shard

__all__ = ["PairDataModule", "PairDataset", "PairRecord", "PAIR_KEYS", "find_pairs", "read_pair_csv", "read_records",
           "sample_pairs", "write_pair_shard", "is_shards", "BaseDataModule", "ImageDataModule",
           "ClassFolderDataModule", "class_folder", "ImageFolderDataset", "ResumableLoader", "EpochShuffle",
           "collate_images", "list_images", "decode_image", "square_uint8", "CorruptImageError",
           "CorruptImageWarning", "sample_images", "sample_folder", "ADE20K_NUM_CLASSES", "DATASETS", "IGNORE_INDEX",
           "DenseDataModule", "DenseDataset", "DenseSample", "StereoSampleDataset", "ade20k_dataset", "list_ade20k",
           "list_nyuv2", "list_taskonomy", "nyuv2_dataset", "nyuv2_layout", "stereo_depth", "taskonomy_buildings",
           "taskonomy_dataset", "taskonomy_split"]
