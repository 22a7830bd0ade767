"""Datasets: specs and folder layouts, discovery, split files, the generated mini set, image loading."""

from .catalog import DATASETS, DatasetIndex, DatasetSpec, Sample, get_spec, index_dataset
from .splits import load_split

__all__ = ["DATASETS", "DatasetIndex", "DatasetSpec", "Sample", "get_spec", "index_dataset", "load_split"]
