"""Structured Sparsity Learning (Wen et al. 2016): train dense with group lassos, fine-tune without the zero groups.

**Phases.** With ``T`` steps and ``F`` fine-tuning steps, the freeze step is ``t_f = T - F``:

* steps ``0 .. t_f - 1`` train dense with :class:`~jaxsparse.regularizers.SSLPenalty`, which drives
  whole groups (filters, channels, kernel shapes, residual blocks, heads) to zero, exactly: by the
  paper's subgradient plus zeroing ``|w| < threshold`` after each update, or by group
  soft-thresholding (``prox=True``);
* at step ``t_f`` the masks freeze every weight lying in an all-zero group of any type (mask
  ``False`` there: the Caffe code's ``DISCONNECTED_GRPWISE``), and the penalty stops;
* steps ``t_f .. T - 1`` fine-tune with those groups held at exactly zero by the wrapper's masks
  (``u = -theta`` off the mask), the other weights free.

The masks are unstructured (one entry per weight), so groups of several types (a filter, a
kernel shape) can be frozen together; they start all ``True`` (``fixed_counts`` is false: the
sparsity is not a target but follows from ``lambda``, and the run's ``sparsity`` setting is unused).
Leaves that only ``coupled`` or ``blocks`` name (a conv's BatchNorm scale and bias) join the layout
so that they are frozen with their group.

References:
  Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016;
  code: wenwei202/caffe, branch scnn (``DISCONNECTED_GRPWISE``, ``kernel_shape_decay``,
  ``breadth_decay``, ``block_group_lasso``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm, sparse_forward_cost
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.compaction import coupled_leaves
from jaxsparse.masks import (
    LayerPlan,
    Masks,
    Params,
    SparsityLayout,
    Unstructured,
    default_filter,
    mask_leaves,
    masks_from_leaves,
)
from jaxsparse.regularizers import RESNET_BLOCK_LEAF, SSLPenalty, parse_groups
from jaxsparse.schedules import Schedule, UpdateSchedule

__all__ = ["FINETUNE_STEPS", "StructuredSparsityLearning", "finetune_start", "ssl"]


def finetune_start(steps: int | None, finetune_steps: int | None) -> int:
    """The step fine-tuning starts at, ``steps - finetune_steps`` (default ``finetune_steps``: a quarter of ``steps``).

    Raises:
      ValueError: ``steps`` is unknown or below 2, or ``finetune_steps`` is not in ``[1, steps)``.

    Example:
      >>> finetune_start(100, None), finetune_start(100, 10)
      (75, 90)
    """
    if steps is None or isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(
            f"a run that ends in fine-tuning needs its number of steps (an int >= 2), got steps={steps!r}."
        )
    tune = max(1, steps // 4) if finetune_steps is None else finetune_steps
    if isinstance(tune, bool) or not isinstance(tune, int) or not 1 <= tune < steps:
        raise ValueError(f"finetune_steps must be an int in [1, steps={steps}), got {finetune_steps!r}.")
    return steps - tune


@dataclasses.dataclass(frozen=True)
class _Penalised:
    """The layout's filter: kernels (the default filter), and the leaves only coupled or block groups name."""

    patterns: tuple[str, ...] = ()

    def __call__(self, name: str, leaf: jax.Array) -> bool:
        return default_filter(name, leaf) or any(re.fullmatch(pattern, name) for pattern in self.patterns)


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class StructuredSparsityLearning(SparseAlgorithm):
    """SSL: dense training under :class:`~jaxsparse.regularizers.SSLPenalty`, then its zero groups frozen.

    Attributes:
      layout: which leaves are penalised and masked (sparsity 0, unstructured masks).
      schedule: one mask update, at the freeze step ``t_f``.
      regularizer: the penalty, with ``end_step = t_f``.
      skip_optimizer_on_update: apply no optimizer step at the freeze step.
    """

    name: str = "ssl"
    layout: SparsityLayout
    schedule: UpdateSchedule
    regularizer: SSLPenalty
    skip_optimizer_on_update: bool = False

    fixed_counts: typing.ClassVar[bool] = False

    def __post_init__(self):
        if self.schedule.begin_step != self.schedule.end_step or self.regularizer.end_step != self.schedule.begin_step:
            raise ValueError(
                "ssl updates its masks once, at the freeze step where the penalty ends: build it with jaxsparse.ssl()."
            )

    @property
    def freeze_step(self) -> int:
        """``t_f``: the step whose update freezes the zero groups, the first step of fine-tuning."""
        return self.schedule.begin_step

    def plan(self, params: Params) -> list[LayerPlan | None]:
        """The layout's plan; a group type the model has no layer for is refused here, before anything runs."""
        plans = self.layout.plan(params)
        self.regularizer.families(params, plans)
        return plans

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Every weight: SSL trains dense until the freeze step."""
        del key
        return masks_from_leaves(
            params, [None if plan is None else jnp.ones(plan.mask_shape, bool) for plan in self.plan(params)]
        )

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """``m <- m & ~z``, with ``z`` the weights lying in an all-zero group of any type."""
        del grads, step, key
        plans = self.plan(params)
        zero = self.regularizer.zero_weights(params, plans)
        leaves = [
            None if plan is None else (m if z is None else m & ~z)
            for plan, m, z in zip(plans, mask_leaves(params, masks), zero, strict=True)
        ]
        return masks_from_leaves(params, leaves), state

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """Dense steps until ``t_f``, then ``3 f_S`` at the final masks: ``(t_f + (T - t_f) f_S / f_D) / T``."""
        del trainable_density, names, plans
        dense = min(self.freeze_step + 1, total_steps)  # the freeze step itself still runs dense
        sparse = sparse_forward_cost(np.asarray(flops), np.asarray(forward_density))
        return float((dense + (total_steps - dense) * sparse) / max(total_steps, 1))


def ssl(
    groups: str | Sequence[str] = ("filter", "channel"),
    *,
    strength: float | Schedule | Mapping[str, float | Schedule] = 0.005,
    steps: int,
    finetune_steps: int | None = None,
    prox: bool = False,
    learning_rate: float | Schedule | None = None,
    threshold: float = 1e-4,
    coupled: Mapping[str, Sequence[str]] | None = None,
    blocks: Mapping[str, Sequence[str]] | None = None,
    skip_optimizer_on_update: bool = False,
    **layout_options,
) -> StructuredSparsityLearning:
    """Structured Sparsity Learning: group lassos on ``groups``, then fine-tuning with the zero groups frozen.

    .. math::

        E = E_D + \\sum_k \\lambda_k(t) \\sum_l \\sum_g \\lVert W_l^{(g)} \\rVert_2 \\quad (t < t_f = T - F)

    Args:
      groups: group types, a comma list or a sequence (:data:`~jaxsparse.regularizers.SSL_GROUPS`):
        ``filter``/``neuron``, ``channel``/``input``, ``shape``, ``depth``, ``head``.
      strength: ``lambda``, one float or schedule for every type, or ``{type: lambda}``
        (the paper's LeNet: 0.005; its ResNet depth: 0.007).
      steps: ``T``, the run's steps.
      finetune_steps: ``F``, the fine-tuning steps at the end (default: ``T // 4``).
      prox: exact zeros by group soft-thresholding (needs ``learning_rate``); ``False``: the paper's
        subgradient and zeroing of ``|w| < threshold``.
      learning_rate: the inner optimizer's step size or schedule, for ``prox=True``.
      threshold: the paper's zeroing threshold (``1e-4``, its code's), for ``prox=False``.
      coupled: kernel name -> names of 1-D leaves indexed by its output channel (its bias, the next
        norm's scale and bias), which join its filter groups
        (:func:`~jaxsparse.regularizers.resnet_coupling` gives the library ResNet's).
      blocks: block name -> its leaves, for ``depth`` (default: the library ResNet's blocks).
      skip_optimizer_on_update: apply no optimizer step at the freeze step.
      **layout_options: ``keep_dense``, ``dense_first_layer``, ``dense_last_layer``, ``include``
        (the masks stay unstructured).

    Returns:
      The algorithm.

    Raises:
      ValueError: an unknown or repeated group type, a negative strength, ``prox`` without a
        learning rate, a structure other than unstructured, or bad ``steps`` / ``finetune_steps``.

    Example:
      >>> algo = ssl("filter,shape", steps=1000, finetune_steps=200, prox=True, learning_rate=0.1)
      >>> algo.freeze_step, algo.regularizer.kinds
      (800, ('filter', 'shape'))

    References:
      Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
    """
    kinds = parse_groups(groups)
    if isinstance(strength, Mapping):
        given = parse_groups(list(strength))
        if sorted(given) != sorted(kinds):
            raise ValueError(f"strength gives the types {', '.join(given)}, but groups are {', '.join(kinds)}: "
                             "give one strength per group type, or one for all.")  # fmt: skip
        strengths = dict(zip(given, strength.values(), strict=True))
        strengths = {kind: strengths[kind] for kind in kinds}
    else:
        strengths = dict.fromkeys(kinds, strength)
    structure = layout_options.pop("structure", Unstructured())
    if structure != Unstructured():
        raise ValueError(
            f"ssl keeps one mask entry per weight so that groups of several types can be frozen, got structure="
            f"{structure!r}: leave the structure unstructured (the group types choose the groups)."
        )
    layout_options.pop("distribution", None)  # at sparsity 0 no distribution applies
    start = finetune_start(steps, finetune_steps)
    regularizer = SSLPenalty(
        strengths,
        prox=prox,
        learning_rate=learning_rate,
        threshold=threshold,
        coupled=coupled,
        blocks=blocks,
        end_step=start,
    )
    extra = [name for _, names in regularizer.coupled or () for name in names]
    extra += [name for _, names in regularizer.blocks or () for name in names]
    patterns = tuple(re.escape(name) for name in extra)
    if "depth" in kinds and regularizer.blocks is None:
        patterns += (RESNET_BLOCK_LEAF.pattern,)
    if "include" in layout_options:
        include = layout_options.pop("include")
    else:
        include = _Penalised(patterns)
    layout = SparsityLayout(0.0, distribution="uniform", include=include, **layout_options)
    return StructuredSparsityLearning(
        layout=layout,
        schedule=UpdateSchedule(start, start, 1),
        regularizer=regularizer,
        skip_optimizer_on_update=skip_optimizer_on_update,
    )


FINETUNE_STEPS = Option(
    "finetune_steps",
    int,
    None,
    "ssl, l1_filter: steps of fine-tuning at the end of the run, with the zeroed groups or pruned filters held "
    "at 0 (default: a quarter of --steps)",
    valid=lambda value, settings: value is None or (value >= 1 and (settings.steps is None or value < settings.steps)),
    rule="must be an integer in [1, steps)",
)


def _valid_groups(value: str) -> bool:
    try:
        parse_groups(value)
    except ValueError:
        return False
    return True


def finetune_settings(settings: Settings) -> tuple[int | None, int | None]:
    """``(steps, finetune_steps)`` of a run, for :func:`finetune_start`.

    The command line always knows the run's steps. The registry's other clients may build a method
    for a run of no fixed length (the speed benchmark: ``steps=None``); fine-tuning then starts at
    the mask-update grid's ``end_step``.
    """
    finetune = settings.options["finetune_steps"]
    if settings.steps is not None or settings.end_step is None:
        return settings.steps, finetune
    finetune = 1 if finetune is None else finetune
    return settings.end_step + finetune, finetune


def _build(settings: Settings) -> StructuredSparsityLearning:
    options = settings.options
    keywords = {key: value for key, value in settings.layout_keywords().items() if key != "distribution"}
    steps, finetune_steps = finetune_settings(settings)
    build = functools.partial(
        ssl,
        options["ssl_groups"],
        strength=options["ssl_lambda"],
        steps=steps,
        finetune_steps=finetune_steps,
        prox=options["ssl_prox"],
        learning_rate=settings.learning_rate if options["ssl_prox"] else None,
        threshold=options["ssl_threshold"],
        **keywords,
    )
    algorithm = build()
    spec = settings.model
    if spec is None or not options["ssl_couple"] or "filter" not in algorithm.regularizer.kinds:
        return algorithm
    # Each filter group takes the 1-D leaves of its channel space (its bias, the next norm's scale and
    # shift), traced from the model, so that a zeroed channel is a removable one.
    kernels = set(algorithm.regularizer.filter_kernels(spec.params, algorithm.plan(spec.params)))
    traced = coupled_leaves(spec.apply_fn, spec.params, spec.inputs)
    return build(coupled={kernel: leaves for kernel, leaves in traced.items() if kernel in kernels})


register(
    Method(
        "ssl",
        _build,
        "structured sparsity learning: group lassos on filters/channels/shapes/blocks/heads, then fine-tune with "
        "the zero groups frozen (Wen et al. 2016)",
        (
            Option(
                "ssl_groups",
                str,
                "filter,channel",
                "ssl: group types, a comma list of filter (neuron), channel (input), shape, depth, head",
                valid=lambda value, settings: _valid_groups(value),
                rule="must be a comma list of filter, neuron, channel, input, shape, depth, head",
            ),
            Option(
                "ssl_lambda",
                float,
                0.005,
                "ssl: lambda of every group type's penalty (the paper's LeNet: 0.005)",
                valid=lambda value, settings: math.isfinite(value) and value >= 0,
                rule="must be a float >= 0",
            ),
            Option(
                "ssl_couple",
                bool,
                True,
                "ssl: put each filter's bias and the next norm's scale and shift (traced from the model) in its "
                "group, so that zeroed channels can be removed (jaxsparse compact)",
            ),
            Option(
                "ssl_prox",
                bool,
                False,
                "ssl: exact zeros by group soft-thresholding with the learning rate, instead of the paper's "
                "subgradient and |w| < --ssl-threshold zeroing",
            ),
            Option(
                "ssl_threshold",
                float,
                1e-4,
                "ssl: without --ssl-prox, penalised weights below this magnitude are zeroed after each update",
                valid=lambda value, settings: math.isfinite(value) and value >= 0,
                rule="must be a float >= 0",
            ),
            FINETUNE_STEPS,
        ),
        updates_masks=False,
        default_sparsity=lambda options: 0.0,
    )
)
