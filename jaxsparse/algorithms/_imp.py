"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019) and their descendants.

A run is ``R + 1`` rounds over one learning-rate schedule of ``T`` steps. Round 0 trains the dense
network for ``T`` steps. Each later round ``r = 1 .. R`` starts with one pruning step, which takes
no optimizer step:

* **prune** the smallest ``|theta|`` among the active weights, to the sparsity
  ``s_r = 1 - (1 - p)^r`` (a fraction ``p`` of the remaining weights each round), and at round
  ``R`` exactly to the target ``S``: per layer (layer ``l`` to ``S_l s_r / S``, so each reaches
  its ``floor(S_l N_l)`` zeros) or with one global threshold;
* **rewind**, by ``rewind``:

  - ``"init"``: ``theta <- theta_0``, the optimizer restarts (Frankle & Carbin, ICLR 2019);
  - ``"step:K"``: ``theta <- theta_K``, the weights after ``K`` steps of round 0; the optimizer
    restarts with its step counters at ``K``, so the schedule resumes at ``K`` and each later round
    trains ``T - K`` steps ("late rewinding", Frankle et al., ICML 2020; open_lth's
    ``rewinding_steps``);
  - ``"lr"``: the trained weights are kept and the optimizer restarts, so the learning-rate
    schedule runs again from its start (Renda et al., ICLR 2020);
  - ``"none"``: weights and optimizer run on (fine-tuning at the rate the schedule has reached,
    Renda et al.'s baseline: with a schedule that decays to 0 this trains nothing, so use a
    constant one);

* **retrain** for ``T`` steps (``T - K`` with ``"step:K"``).

With ``L`` the steps of a later round, the pruning steps are ``T + (r - 1)(L + 1)`` and the run has
``T + R (L + 1)`` steps (:meth:`IterativeMagnitude.total_steps`). The rewind point is the
algorithm's state, a copy of the parameters taken at step ``K``, so a checkpoint holds it and a
resumed run rewinds to the same weights. Optimizer moments restart at every rewind (open_lth builds
a fresh optimizer each level). Running statistics outside the parameters (batch norm) are not
rewound. The rewound weights are set through the optimizer's update, ``theta + (theta_K - theta)``,
which equals ``theta_K`` to within one rounding.

**Controls** (Frankle & Carbin 2019): a random re-initialisation with a ticket's mask, and a random
mask with the ticket's per-layer counts, are :func:`~jaxsparse.algorithms.static` training with the
masks handed to ``sparsify`` (``masks=``) and the layout fitted to them
(:func:`jaxsparse.pruning_at_init.fit_layout`): new initial parameters for the first, the fitted
layout's random masks for the second.

References:
  Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks",
  ICLR 2019.
  Frankle, Dziugaite, Roy, Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis",
  ICML 2020.
  Renda, Frankle, Carbin, "Comparing Rewinding and Fine-tuning in Neural Network Pruning",
  ICLR 2020.
  facebookresearch/open_lth (the reference implementation of these experiments).
"""

from __future__ import annotations

import dataclasses
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse._variables import unboxed
from jaxsparse.algorithms._base import AlgorithmState, ParamReset, SparseAlgorithm
from jaxsparse.algorithms._factory_options import check_pooled_scope, make_layout
from jaxsparse.algorithms._magnitude_pruning import SCOPES, prune_by_magnitude, ramp_training_flops
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import Masks, Params, SparsityLayout
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import UpdateSchedule

__all__ = ["REWINDS", "ImpState", "IterativeMagnitude", "imp", "imp_sparsity", "parse_rewind"]

REWINDS = ("init", "step:K", "lr", "none")
"""What a round rewinds to: the initial weights, the weights at step ``K``, the learning rate only, nothing."""


def parse_rewind(rewind: str) -> tuple[str, int]:
    """``(kind, K)`` of a rewind setting: ``"init"`` is ``("step", 0)``'s weights; ``"step:K"``, ``"lr"``, ``"none"``.

    Raises:
      ValueError: not one of :data:`REWINDS`, or ``K`` is not a non-negative integer.

    Example:
      >>> parse_rewind("step:500"), parse_rewind("init"), parse_rewind("lr")
      (('step', 500), ('step', 0), ('lr', 0))
    """
    text = str(rewind).strip()
    if text in ("init", "lr", "none"):
        return ("step", 0) if text == "init" else (text, 0)
    kind, _, number = text.partition(":")
    if kind == "step" and number.isdigit():
        return "step", int(number)
    raise ValueError(
        f"rewind={rewind!r} is not known: choose init (the initial weights), step:K (the weights after K steps, "
        "e.g. step:500), lr (keep the weights, rerun the learning-rate schedule) or none (fine-tune)."
    )


def imp_sparsity(rounds: int, fraction: float) -> float:
    """``1 - (1 - p)^R``: the sparsity ``R`` rounds of pruning a fraction ``p`` of the remaining weights reach.

    Example:
      >>> round(imp_sparsity(8, 0.2), 4)
      0.8322
    """
    return 1.0 - (1.0 - fraction) ** rounds


class ImpState(typing.NamedTuple):
    """The rewind point: a copy of the parameters at step ``K`` (``theta_0`` until then)."""

    rewind: Params


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class IterativeMagnitude(SparseAlgorithm):
    """Train, prune a fraction of the remaining weights by ``|theta|``, rewind, retrain (see the module docstring).

    Attributes:
      layout: the final layout (sparsity ``S`` per layer).
      round_steps: ``T``, the steps of the learning-rate schedule, trained by round 0.
      rounds: ``R``, the pruning rounds.
      fraction: ``p``, the fraction of the remaining weights pruned each round.
      rewind: ``"step"`` (the weights at ``rewind_step``; ``0`` is the initial weights), ``"lr"`` or
        ``"none"``.
      rewind_step: ``K``.
      scope: ``"layer"`` or ``"global"`` (one magnitude threshold over all layers).
      regularizer: an optional penalty.
    """

    name: str = "imp"
    layout: SparsityLayout
    round_steps: int
    rounds: int
    fraction: float
    rewind: str = "step"
    rewind_step: int = 0
    scope: str = "layer"
    regularizer: Regularizer | None = None
    schedule: UpdateSchedule | None = dataclasses.field(default=None, init=False)
    skip_optimizer_on_update: bool = dataclasses.field(default=True, init=False)

    fixed_counts: typing.ClassVar[bool] = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose 'layer' or 'global'.")
        check_pooled_scope(self.scope, self.layout, "scope")
        if self.rewind not in ("step", "lr", "none"):
            raise ValueError(f"rewind={self.rewind!r} must be 'step', 'lr' or 'none' (see parse_rewind).")
        for name in ("round_steps", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(
                f"fraction must be in (0, 1), e.g. 0.2 (20% of the remaining weights), got {self.fraction}."
            )
        if not 0 <= self.rewind_step < self.round_steps:
            raise ValueError(
                f"rewind step {self.rewind_step} is not within the {self.round_steps} steps of a round (training "
                f"steps 0 .. {self.round_steps - 1}): rewind to an earlier step, or train longer rounds."
            )
        target, reached = self.layout.sparsity, imp_sparsity(self.rounds, self.fraction)
        if reached < target - 1e-9:
            rounds = math.ceil(math.log1p(-target) / math.log1p(-self.fraction))
            fraction = 1.0 - (1.0 - target) ** (1.0 / self.rounds)
            raise ValueError(
                f"{self.rounds} rounds of pruning {self.fraction:.4g} of the remaining weights reach sparsity "
                f"{reached:.4g}, short of the target {target:.4g}: use at least {rounds} rounds, a fraction of at "
                f"least {math.ceil(fraction * 1e4) / 1e4:.4g}, or a lower sparsity."
            )
        every = self.retrain_steps + 1
        object.__setattr__(
            self,
            "schedule",
            UpdateSchedule(self.round_steps, self.round_steps + (self.rounds - 1) * every, every),
        )

    @property
    def retrain_steps(self) -> int:
        """``L``: the training steps of each round after the first (``T - K`` when rewinding to step ``K``)."""
        return self.round_steps - (self.rewind_step if self.rewind == "step" else 0)

    def total_steps(self, steps: int) -> int:
        """``T + R (L + 1)``: every round's training and its pruning step.

        Raises:
          ValueError: ``steps`` is not this algorithm's ``round_steps``.
        """
        if steps != self.round_steps:
            raise ValueError(f"{self.name} was built for rounds of {self.round_steps} steps, not {steps}.")
        return self.round_steps + self.rounds * (self.retrain_steps + 1)

    def round_of(self, step: int) -> int:
        """The round of ``step``: 0 before the first pruning step, ``r`` from the ``r``-th pruning step on."""
        if step < self.round_steps:
            return 0
        return min(self.rounds, (step - self.round_steps) // (self.retrain_steps + 1) + 1)

    def round_sparsity(self, round_index: int) -> float:
        """The global sparsity of round ``r``'s masks: 0, then ``min(S, 1 - (1 - p)^r)``, and ``S`` at ``R``."""
        if round_index >= self.rounds:
            return self.layout.sparsity
        return min(self.layout.sparsity, imp_sparsity(round_index, self.fraction))

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Round 0 is dense: every entry active."""
        return prune_by_magnitude(self.layout, params, None, 0.0, False, key, self.scope)

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Prune to round ``r``'s sparsity among the active weights (exactly the layout's counts at round ``R``)."""
        del grads
        round_index = (step - self.round_steps) // (self.retrain_steps + 1) + 1
        ramp = 1.0 - (1.0 - self.fraction) ** round_index.astype(jnp.float32)
        at_end = round_index >= self.rounds
        sparsity = jnp.where(at_end, self.layout.sparsity, jnp.minimum(self.layout.sparsity, ramp))
        return prune_by_magnitude(self.layout, params, masks, sparsity, at_end, key, self.scope), state

    def _keeps_rewind_point(self) -> bool:
        return self.rewind == "step"

    def init_state(self, params: Params, masks: Masks) -> ImpState | tuple:
        """A copy of the initial parameters (the rewind point until step ``K``); nothing for ``lr`` / ``none``."""
        del masks
        if not self._keeps_rewind_point():
            return ()
        return ImpState(jax.tree.map(jnp.array, unboxed(params)))

    def observe(self, params, masks, grads, step, state):
        """At step ``K`` of round 0 the rewind point becomes the parameters of that step."""
        del masks, grads
        if not self._keeps_rewind_point():
            return state
        return lax.cond(step == self.rewind_step, lambda: ImpState(params), lambda: state)

    def on_mask_change(self, params, old, new, state, key, is_update) -> ParamReset | None:
        """On a pruning step: the rewound weights (``init``, ``step:K``), a restarted optimizer (all but ``none``)."""
        del old, key
        if self.rewind == "none":
            return None
        if self.rewind == "lr":
            return ParamReset(jax.tree.map(lambda _: None, params), new, restart_optimizer=is_update)
        everywhere = jax.tree.map(lambda p: jnp.broadcast_to(is_update, jnp.shape(p)), params)
        return ParamReset(state.rewind, everywhere, restart_optimizer=is_update, optimizer_step=self.rewind_step)

    def _sparsity_in_effect(self) -> np.ndarray:
        """The global sparsity of the masks each step of the run trains at (a pruning step: the round before)."""
        steps = np.arange(self.total_steps(self.round_steps))
        rounds = np.array([self.round_of(int(t)) for t in np.maximum(steps - 1, 0)])
        rounds[0] = 0
        return np.array([self.round_sparsity(int(r)) for r in rounds])

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """Every round's ``3 f_S`` relative to one dense training of ``T`` steps.

        Round ``r`` trains at ``s_r``, each layer at ``S_l s_r / S`` (exact for ``scope="layer"``, the
        proportional estimate for ``scope="global"``), so the ratio is
        ``sum_t f_S(t) / (T f_D)``, which exceeds 1 when the rounds cost more than one dense run.
        """
        del trainable_density, names, plans
        in_effect = self._sparsity_in_effect()
        steps = len(in_effect)
        return ramp_training_flops(flops, forward_density, self.layout.sparsity, in_effect) * steps / total_steps


def imp(
    sparsity: float | None = None,
    *,
    round_steps: int,
    rounds: int = 8,
    fraction: float = 0.2,
    rewind: str = "init",
    scope: str = "layer",
    distribution: str = "uniform",
    regularizer: Regularizer | None = None,
    **layout_options,
) -> IterativeMagnitude:
    """Iterative magnitude pruning with rewinding (lottery tickets).

    Args:
      sparsity: the final sparsity ``S`` (default: ``1 - (1 - fraction)^rounds``).
      round_steps: ``T``, the steps of the learning-rate schedule each round retrains.
      rounds: ``R``, the number of pruning rounds after the dense round 0.
      fraction: ``p``, the fraction of the remaining weights pruned each round (0.2 in
        Frankle & Carbin 2019).
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"none"`` (see the module docstring).
      scope: ``"layer"`` (each layer pruned by ``p``; with a distribution, towards its own target)
        or ``"global"`` (one threshold over all layers).
      distribution: how ``S`` is split over layers with ``scope="layer"``.
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm; a run takes ``algo.total_steps(round_steps)`` steps.

    Raises:
      ValueError: the rounds cannot reach ``sparsity`` (the message says how many rounds, or what
        fraction, would), or the rewind step is not within a round.

    Example:
      >>> algo = imp(round_steps=100, rounds=3, rewind="step:10")
      >>> algo.total_steps(100), [algo.round_of(t) for t in (99, 100, 190, 191)]
      (373, [0, 1, 1, 2])
    """
    kind, step = parse_rewind(rewind)
    if sparsity is None:
        sparsity = imp_sparsity(rounds, fraction)
    return IterativeMagnitude(
        layout=make_layout(sparsity, distribution, layout_options),
        round_steps=round_steps,
        rounds=rounds,
        fraction=fraction,
        rewind=kind,
        rewind_step=step,
        scope=scope,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> IterativeMagnitude:
    options = settings.options
    if settings.steps is None:
        raise ValueError("imp needs the steps of one round: pass steps= (jaxsparse train --steps).")
    return imp(
        settings.sparsity,
        round_steps=settings.steps,
        rounds=options["imp_rounds"],
        fraction=options["imp_fraction"],
        rewind=options["rewind"],
        scope=options["imp_scope"],
        **settings.layout_keywords(),
    )


def _valid_rewind(value: str, settings: Settings) -> bool:
    try:
        kind, step = parse_rewind(value)
    except ValueError:
        return False
    return settings.steps is None or step < settings.steps


register(
    Method(
        "imp",
        _build,
        "iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019); --steps is one round",
        options=(
            Option(
                "imp_rounds", int, 8, "IMP: pruning rounds R after the dense round", lambda v, s: v >= 1, "an int >= 1"
            ),
            Option(
                "imp_fraction",
                float,
                0.2,
                "IMP: fraction of the remaining weights pruned each round",
                lambda v, s: 0.0 < v < 1.0,
                "a float in (0, 1), e.g. 0.2",
            ),
            Option(
                "rewind",
                str,
                "init",
                "IMP: init (initial weights), step:K (weights after K steps; the schedule resumes at K), lr (keep the "
                "weights, rerun the schedule) or none (fine-tune at the schedule's final rate)",
                _valid_rewind,
                "init, step:K with 0 <= K < steps (the steps of one round), lr or none",
            ),
            Option(
                "imp_scope",
                str,
                "layer",
                "IMP: layer (prune each layer towards its target) or global (one magnitude threshold)",
                lambda v, s: v in SCOPES,
                "layer or global",
            ),
        ),
        updates_masks=False,
        default_sparsity=lambda options: imp_sparsity(options["imp_rounds"], options["imp_fraction"]),
    )
)
