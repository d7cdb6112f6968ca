"""scikit-learn's bundled digits: 1,797 8x8 grey-scale images of 10 digits, no download.

The images are the UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak
1998), whose pixels count set bits in 4x4 blocks and so lie in ``{0, ..., 16}``.
"""

from __future__ import annotations

from jaxsparse.data._dataset import Dataset

__all__ = ["load_digits"]

SPLIT_SEED = 0
"""``random_state`` of the train/test split; fixed so that the split never depends on a run's seed."""

TEST_SIZE = 360
"""Test examples (about 20%); the remaining 1,437 train."""

_MAX_PIXEL = 16.0  # each pixel counts the set bits of a 4x4 block


def load_digits() -> Dataset:
    """Digits scaled to ``[0, 1]``, shape ``(8, 8, 1)``, split 1,437 / 360 stratified by class.

    The split is ``sklearn.model_selection.train_test_split(test_size=360, stratify=labels,
    random_state=SPLIT_SEED)``, so every run sees the same test set.

    Returns:
      The ``"digits"`` :class:`Dataset` (10 classes).

    References:
      Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
      Repository, 1998.
    """
    # Imported here: scikit-learn is an optional extra and slow to import.
    from sklearn import datasets, model_selection

    digits = datasets.load_digits()
    images = digits.images[..., None] / _MAX_PIXEL
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        images, digits.target, test_size=TEST_SIZE, stratify=digits.target, random_state=SPLIT_SEED
    )
    return Dataset.from_arrays("digits", train=(x_train, y_train), test=(x_test, y_test), num_classes=10)
