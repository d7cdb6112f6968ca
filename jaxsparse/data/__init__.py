"""Data pipelines for the training harness: classification data sets and grain batch streams.

Kept apart from the core (it needs the ``train`` extra): importing :mod:`jaxsparse` never imports
this package, and this package imports scikit-learn, mnist1d and tensorflow_datasets only when a
data set that needs them is loaded.

Example:
  >>> from jaxsparse.data import load_dataset, train_batches
  >>> ds = load_dataset("digits")
  >>> train_batches(ds, batch_size=8, seed=0)[0]["labels"].shape
  (8,)
"""

from jaxsparse.data._batches import eval_batches, train_batches
from jaxsparse.data._dataset import Dataset, ExampleSource
from jaxsparse.data._load import DATASETS, load_dataset
from jaxsparse.data._mnist1d import generate_mnist1d
from jaxsparse.data._tfds import DatasetNotPreparedError

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetNotPreparedError",
    "ExampleSource",
    "eval_batches",
    "generate_mnist1d",
    "load_dataset",
    "train_batches",
]
