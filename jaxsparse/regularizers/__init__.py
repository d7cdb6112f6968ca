"""Regularisers an algorithm adds to training: a penalty's gradient and an optional proximal step."""

from jaxsparse.regularizers._group_lasso import GroupLasso
from jaxsparse.regularizers._regularizer import Regularizer, as_schedule
from jaxsparse.regularizers._ssl import (
    RESNET_BLOCK_LEAF,
    SSL_GROUPS,
    SSLPenalty,
    parse_groups,
    resnet_blocks,
    resnet_coupling,
)

__all__ = [
    "RESNET_BLOCK_LEAF",
    "SSL_GROUPS",
    "GroupLasso",
    "Regularizer",
    "SSLPenalty",
    "as_schedule",
    "parse_groups",
    "resnet_blocks",
    "resnet_coupling",
]
