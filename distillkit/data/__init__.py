"""Datasets (registry, loaders, normalisation), test fixtures of their layouts, and ZCA whitening."""

from distillkit.data.datasets import dataset_names, load_dataset
from distillkit.data.imagedataset import ImageDataset
from distillkit.data.pixels import NormalisedPixels
from distillkit.data.zca import ZCA

__all__ = ["ZCA", "ImageDataset", "NormalisedPixels", "dataset_names", "load_dataset"]
