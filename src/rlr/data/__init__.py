"""Datasets: discover samples on disk, decode them into the shared `Sample` type, check them."""

from rlr.data.check import CheckReport, check_dataset, format_check_report
from rlr.data.dataset import ImageDataset
from rlr.data.folder import discover_folder
from rlr.data.mvtec import discover_mvtec
from rlr.data.split import DatasetSplit
from rlr.data.transforms import image_size, load_image, load_mask
from rlr.data.types import ANOMALOUS, NORMAL, ImageRecord, Sample

__all__ = [
    "ANOMALOUS",
    "NORMAL",
    "CheckReport",
    "DatasetSplit",
    "ImageDataset",
    "ImageRecord",
    "Sample",
    "check_dataset",
    "discover_folder",
    "discover_mvtec",
    "format_check_report",
    "image_size",
    "load_image",
    "load_mask",
]
