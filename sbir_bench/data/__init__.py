"""Datasets: the catalog of benchmarks, discovery on disk, split files, the generated mini set,
image decoding, training triplets and the ZS / GZS / FG task composition."""

from .catalog import DatasetSpec, get_spec
from .discovery import DatasetIndex, Sample, index_dataset
from .splits import load_split

__all__ = ["DatasetIndex", "DatasetSpec", "Sample", "get_spec", "index_dataset", "load_split"]
