"""Image data: sources (folder, file list, labeled folder, WebDataset shards), robust datasets, SSL transforms, demo
data and real handwriting (Omniglot, vendored)."""

from mmpretrain.data.datamodule import (
    LabeledImageDataModule,
    SampledLoaders,
    SSLImageDataModule,
    available_cpus,
    loader_pin_memory,
    loader_workers,
)
from mmpretrain.data.dataset import ImageDataset, load_rgb
from mmpretrain.data.demo import DEMO_CLASSES, make_demo_images
from mmpretrain.data.health import DataHealthMonitor
from mmpretrain.data.omniglot import OMNIGLOT_ALPHABETS, omniglot_folder
from mmpretrain.data.records import csv_list, read_records
from mmpretrain.data.shard_samples import SampleError, ShardError, is_shard_error, read_shard
from mmpretrain.data.shard_writer import write_shards
from mmpretrain.data.sources import (
    ImageSource,
    InputRows,
    image_source,
    is_video_manifest,
    labeled_folder,
    read_file_list,
    read_image_input,
    scan_images,
)
from mmpretrain.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameNormalize,
    ViewAugment,
    denormalize,
    eval_transform,
    linear_train_transform,
    moby_transform,
)

__all__ = [
    "DEMO_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OMNIGLOT_ALPHABETS",
    "DataHealthMonitor",
    "FrameNormalize",
    "ImageDataset",
    "ImageSource",
    "InputRows",
    "LabeledImageDataModule",
    "SSLImageDataModule",
    "SampleError",
    "SampledLoaders",
    "ShardError",
    "ViewAugment",
    "available_cpus",
    "csv_list",
    "denormalize",
    "eval_transform",
    "image_source",
    "is_shard_error",
    "is_video_manifest",
    "labeled_folder",
    "linear_train_transform",
    "load_rgb",
    "loader_pin_memory",
    "loader_workers",
    "make_demo_images",
    "moby_transform",
    "omniglot_folder",
    "read_file_list",
    "read_image_input",
    "read_records",
    "read_shard",
    "scan_images",
    "write_shards",
]
