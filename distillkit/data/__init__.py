"""Datasets (registry, loaders, normalisation) and ZCA whitening."""

from distillkit.data.datasets import ImageDataset, dataset_names, load_dataset
from distillkit.data.pixels import NormalisedPixels
from distillkit.data.zca import ZCA

__all__ = ["ZCA", "ImageDataset", "NormalisedPixels", "dataset_names", "load_dataset"]
