"""L1-norm filter pruning (Li et al. 2017): train dense, remove each layer's smallest-L1 filters at once, fine-tune.

At the step ``t_p = T - F`` (``T`` steps, ``F`` of fine-tuning) every sparsified layer loses the
fraction ``S`` of its filters (output channels, a dense kernel's neurons) with the smallest
``s_n = sum |W[..., n]|``, in one shot and per layer (``floor(S C_out)`` of its ``C_out``); the
remaining ``F`` steps fine-tune with those filters held at exactly zero. As for every method, the
classifier is a sparsified layer too, and its output channels are the classes: keep it dense
(``dense_last_layer=True``, ``--keep-dense`` on the command line) to prune feature layers only, as
the paper does.

This is gradual magnitude pruning with its ramp collapsed to one step, nothing more:
``gradual_magnitude(S, distribution="uniform", structure=OutputChannels(), criterion="l1",
begin_step=t_p - 1, end_step=t_p, update_every=1, scope="layer")``. The ramp's first step
``t_p - 1`` is at sparsity 0 and keeps every filter (a ramp needs ``end_step > begin_step``); its
last, ``t_p``, keeps exactly the layout's per-layer count of the largest-scored groups, and
``criterion="l1"`` scores a group by its L1 norm (the ``"magnitude"`` criterion's L2 norm would
rank filters differently). :func:`l1_filter` builds exactly that, named ``l1_filter``.

References:
  Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017.
"""

from __future__ import annotations

import dataclasses

from jaxsparse.algorithms._gradual_magnitude import GradualMagnitude, gradual_magnitude
from jaxsparse.algorithms._registry import Method, Settings, register
from jaxsparse.algorithms._ssl import FINETUNE_STEPS, finetune_settings, finetune_start
from jaxsparse.masks import OutputChannels

__all__ = ["l1_filter"]


def l1_filter(sparsity: float, *, steps: int, finetune_steps: int | None = None, **layout_options) -> GradualMagnitude:
    """Prune the fraction ``sparsity`` of each layer's filters, smallest ``sum |W[..., n]|`` first, then fine-tune.

    Args:
      sparsity: ``S``, the fraction of every sparsified layer's filters removed.
      steps: ``T``, the run's steps.
      finetune_steps: ``F``, the fine-tuning steps after the prune (default: ``T // 4``).
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields (``keep_dense``,
        ``dense_first_layer``, ``dense_last_layer``, ...); the structure is output channels and the
        distribution uniform.

    Returns:
      A :class:`~jaxsparse.algorithms.GradualMagnitude` named ``l1_filter`` (see the module docstring).

    Raises:
      ValueError: a structure other than output channels, or bad ``steps`` / ``finetune_steps``.

    Example:
      >>> algo = l1_filter(0.5, steps=100, finetune_steps=20)
      >>> algo.name, algo.schedule.begin_step, algo.schedule.end_step, algo.criterion
      ('l1_filter', 79, 80, 'l1')

    References:
      Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017.
    """
    structure = layout_options.pop("structure", OutputChannels())
    if structure != OutputChannels():
        raise ValueError(
            f"l1_filter removes whole filters (output channels), got structure={structure!r}: leave the structure "
            "out (or pass channel); for other groups use gradual_magnitude with criterion='l1'."
        )
    layout_options.pop("distribution", None)  # a fraction of every layer's filters: uniform
    start = finetune_start(steps, finetune_steps)
    algo = gradual_magnitude(
        sparsity,
        distribution="uniform",
        structure=structure,
        begin_step=start - 1,
        end_step=start,
        update_every=1,
        scope="layer",
        criterion="l1",
        **layout_options,
    )
    return dataclasses.replace(algo, name="l1_filter")


def _build(settings: Settings) -> GradualMagnitude:
    keywords = {key: value for key, value in settings.layout_keywords().items() if key != "distribution"}
    steps, finetune_steps = finetune_settings(settings)
    return l1_filter(settings.sparsity, steps=steps, finetune_steps=finetune_steps, **keywords)


register(
    Method(
        "l1_filter",
        _build,
        "train dense, remove each layer's filters of smallest L1 norm at once, fine-tune (Li et al. 2017)",
        (FINETUNE_STEPS,),
        updates_masks=False,
        default_structure="channel",
    )
)
