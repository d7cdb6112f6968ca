"""Regularisers an algorithm adds to training: a penalty's gradient and an optional proximal step."""

from jaxsparse.regularizers._group_lasso import GroupLasso
from jaxsparse.regularizers._regularizer import Regularizer, as_schedule

__all__ = ["GroupLasso", "Regularizer", "as_schedule"]
