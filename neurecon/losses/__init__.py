"""The training objective: loss terms as ``_target_`` nodes (``loss:`` in the config).

Add a term: a :class:`LossTerm` subclass (here, or in your package) and a node under
``loss:`` — see :mod:`neurecon.losses.terms`. The maths is in :mod:`neurecon.losses.functional`.
"""

from neurecon.losses.functional import color_loss, mask_loss
from neurecon.losses.terms import (
    ColorLoss,
    EikonalLoss,
    FreeSpaceLoss,
    LossTerm,
    MaskLoss,
    PhotoConsistencyLoss,
    SparsePointsLoss,
    default_terms,
    total_loss,
)

__all__ = [
    "ColorLoss",
    "EikonalLoss",
    "FreeSpaceLoss",
    "LossTerm",
    "MaskLoss",
    "PhotoConsistencyLoss",
    "SparsePointsLoss",
    "color_loss",
    "default_terms",
    "mask_loss",
    "total_loss",
]
