"""Datamodules: the built-in sample photos, image folders and WebDataset shards, decoded to uint8."""
from .classes import ClassFolderDataModule, class_folder
from .datamodule import BaseDataModule, EpochShuffle, ImageDataModule, ResumableLoader
from .folder import CorruptImageWarning, ImageFolderDataset, collate_images, list_images
from .images import CorruptImageError, decode_image, square_uint8
from .pairs import (PAIR_KEYS, PairDataModule, PairDataset, PairRecord, find_pairs, read_pair_csv, read_records,
                    sample_pairs, write_pair_shard)
from .sample import sample_folder, sample_images

__all__ = ["PairDataModule", "PairDataset", "PairRecord", "PAIR_KEYS", "find_pairs", "read_pair_csv", "read_records",
           "sample_pairs", "write_pair_shard", "ImageDataModule", "ClassFolderDataModule", "class_folder", "ImageFolderDataset", "ResumableLoader", "EpochShuffle", "collate_images",
           "list_images", "decode_image", "square_uint8", "CorruptImageError", "CorruptImageWarning",
           "sample_images", "sample_folder"]
