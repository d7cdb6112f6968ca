"""``prune_at_init``: masks from a criterion scored once at initialisation (or SynFlow's rounds)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.algorithms import SCOPES
from jaxsparse.algorithms._factory_options import check_pooled_scope
from jaxsparse.masks import Masks, Params, SparsityLayout, masks_from_leaves, random_masks
from jaxsparse.masks._scored import group_scores, layout_counts, masks_from_scores, select, tie_key
from jaxsparse.pruning_at_init import _criteria, _synflow
from jaxsparse.pruning_at_init._rounds import exponential_counts

__all__ = ["CRITERIA", "prune_at_init"]

CRITERIA: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "synflow")
"""The criteria :func:`prune_at_init` accepts."""

_SYNFLOW_ROUNDS = 100


def _indices(layout: SparsityLayout, params: Params):
    plans = layout.plan(params)
    return plans, [i for i, plan in enumerate(plans) if plan is not None]


def _assemble(params: Params, plans, indices, kept) -> Masks:
    leaves = [None] * len(plans)
    for i, mask in zip(indices, kept, strict=True):
        leaves[i] = mask
    return masks_from_leaves(params, leaves)


@functools.partial(jax.jit, static_argnames="layout")
def _random_layer(layout: SparsityLayout, params: Params, key) -> Masks:
    """Random masks at layer scope: :func:`~jaxsparse.masks.random_masks` itself."""
    return random_masks(key, params, layout.plan(params))


@functools.partial(jax.jit, static_argnames=("layout", "criterion"))
def _data_free_scores(layout: SparsityLayout, criterion: str, params: Params, key) -> Params:
    """The random criterion's draws or ``|theta|``, ``None`` at dense leaves."""
    plans = layout.plan(params)
    if criterion == "random":
        return masks_from_leaves(params, _criteria.random_scores(key, params, plans))
    return masks_from_leaves(params, _criteria.magnitude_scores(params, plans))


@functools.partial(jax.jit, static_argnames=("layout", "scope", "rounds", "apply_fn"))
def _synflow_masks(
    layout: SparsityLayout, scope: str, rounds: int, apply_fn: Callable, params: Params, inputs, key
) -> tuple[Masks, jax.Array, jax.Array]:
    """SynFlow's ``rounds`` rounds in one ``fori_loop``; the masks, the first failing status and its round."""
    plans, indices = _indices(layout, params)
    chosen = [plans[i] for i in indices]
    if scope == "global":
        total = sum(plan.size for plan in chosen)
        counts = jnp.asarray(exponential_counts(layout_counts(plans, scope), total, rounds), jnp.int32)
    else:
        per_layer = [exponential_counts(plan.row_active, plan.row_size, rounds) for plan in chosen]
        counts = jnp.asarray(np.stack(per_layer, axis=1), jnp.int32)  # (rounds, layers)
    tie_root = tie_key(key)

    def one_round(r, carry):
        kept, status, failed_at = carry
        full = [None] * len(plans)
        for i, mask in zip(indices, kept, strict=True):
            full[i] = plans[i].structure.expand(mask, plans[i].shape)
        scores, code = _synflow.synflow_scores(apply_fn, params, full, inputs, plans)
        grouped = [group_scores(plans[i], scores[i]) for i in indices]
        new = select(chosen, grouped, counts[r], list(kept), scope, jax.random.fold_in(tie_root, r))
        first = (status == _synflow.OK) & (code != _synflow.OK)
        return tuple(new), jnp.where(first, code, status), jnp.where(first, r, failed_at)

    start = tuple(jnp.ones(plan.mask_shape, bool) for plan in chosen)
    kept, status, failed_at = lax.fori_loop(0, rounds, one_round, (start, jnp.int32(_synflow.OK), jnp.int32(-1)))
    return _assemble(params, plans, indices, kept), status, failed_at


def _check_rounds(criterion: str, rounds: int | None) -> int:
    if rounds is None:
        return _SYNFLOW_ROUNDS if criterion == "synflow" else 1
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer (or None for the criterion's default), got {rounds!r}.")
    if rounds > 1 and criterion != "synflow":
        raise ValueError(
            f"rounds={rounds} is for SynFlow's iterative pruning; {criterion!r} scores once at initialisation "
            "(iterative SNIP is a different method, FORCE/Iter-SNIP): pass rounds=None or 1."
        )
    return int(rounds)


def _missing(criterion: str, **arguments) -> None:
    names = [name for name, value in arguments.items() if value is None]
    if names:
        needs = {
            "snip": "loss_fn(params, batch) -> scalar and batches, an iterable of batches (e.g. [batch])",
            "grasp": "loss_fn(params, batch) -> scalar and batches, an iterable of batches (e.g. [batch])",
            "synflow": "apply_fn(params, inputs) -> outputs and inputs, an example input (e.g. x[:1]); "
            "SynFlow is data-free and feeds all-ones of that shape",
        }[criterion]
        raise ValueError(f"criterion {criterion!r} needs {' and '.join(names)}: pass {needs}.")


def _raise_on_status(status: jax.Array, failed_at: jax.Array, rounds: int) -> None:
    if isinstance(status, jax.core.Tracer):  # under an outer jit: nothing concrete to report
        return
    code, where = int(status), int(failed_at)
    if code == _synflow.OK:
        return
    at = f"at round {where + 1} of {rounds}"
    if code == _synflow.NO_PATH:
        raise ValueError(
            f"SynFlow's R = sum(apply_fn(|theta * m|, ones)) is 0 {at}: no signal reaches the output, so every "
            "score is 0 and nothing can be ranked. Check that apply_fn uses the params it is given, that no "
            "layer on every path is all zero, and that no layer is pruned entirely (a layer_sparsity of 1.0)."
        )
    raise FloatingPointError(
        f"SynFlow's R overflows {_synflow.compute_dtype()} {at}, and this network is not homogeneous in its "
        "parameters (nonzero biases, residual connections, normalisation or a non-ReLU activation), so the "
        "exact power-of-two rescaling does not apply. Compute in float64: "
        "jax.config.update('jax_enable_x64', True) (or `with jax.enable_x64(True):`)."
    )


def prune_at_init(
    criterion: str,
    params: Params,
    layout: SparsityLayout,
    *,
    key: jax.Array,
    loss_fn: Callable[[Params, object], jax.Array] | None = None,
    batches=None,
    apply_fn: Callable[[Params, jax.Array], object] | None = None,
    inputs=None,
    scope: str = "global",
    rounds: int | None = None,
) -> Masks:
    """Masks chosen at initialisation by ``criterion``, with exactly the layout's counts.

    Every criterion assigns each weight ``q`` of the sparsified leaves a score ``S_q`` and keeps
    the largest (``g = sum_b dL_b/dtheta``, summed over ``batches``; ``H`` its Hessian):

    ==============  =========================================================  ==========================
    criterion       kept: the largest of                                        reference
    ==============  =========================================================  ==========================
    ``random``      uniform ``uint32`` draws                                    (Liu et al. 2022)
    ``magnitude``   ``|theta|``                                                 (Frankle & Carbin 2019)
    ``snip``        ``|g * theta|``                                             Lee et al. 2019
    ``grasp``       ``theta * (H g) = -S``: the largest ``S = -theta * (H g)``  Wang et al. 2020
                    are *removed*
    ``synflow``     ``|dR/dtheta * theta|``, ``R = 1^T f(|theta * m|, 1)``,     Tanaka et al. 2020
                    ``rounds`` times on an exponential schedule
    ==============  =========================================================  ==========================

    **Counts.** ``scope="global"`` ranks all sparsified layers together and keeps
    ``sum_l active_l`` of the layout's counts in total (the papers' protocol); a layer can then keep
    nothing (see :func:`layer_collapse`, and :func:`fit_layout` for the layout of the result).
    ``scope="layer"`` keeps exactly each layer's ``plan.active`` (its ``row_active`` per row): the
    layout's distribution. Under a structure, element scores are reduced to one per group (L2 norm,
    the maximum of random draws, and for GraSP's signed scores the sum), so layer scope works with
    every structure; global scope is refused for row-wise ones (N:M, constant fan-in). Ties are
    broken by a keyed hash of the position, from ``key``: the same key gives the same masks.

    **Random** at layer scope is :func:`~jaxsparse.masks.random_masks` (``static``'s masks).

    **SNIP** scores the connection sensitivity ``|dL/dc * c|`` at ``c = 1`` of a multiplicative
    gate on each weight, which is ``|g * theta|``. The papers score one batch; here the gradients
    of all ``batches`` are summed (the order of the mean).

    **GraSP** removes the weights whose removal reduces the gradient flow ``g^T g`` least: removing
    weight ``q`` (``delta = -theta_q``) changes ``g^T g`` to first order by ``2 S_q`` with
    ``S = -theta * (H g)``, so the *highest* ``S`` are removed (the largest ``theta * (H g)`` kept).
    ``H g`` is a Hessian-vector product (``jax.jvp`` of ``jax.grad``), restricted as in the
    reference to the sparsified leaves; ``g`` and ``H g`` are summed over ``batches`` (the
    reference: 10 samples per class, in two halves). The reference's normalisation by
    ``|sum S|`` is a positive factor and is skipped. The reference divides the logits by a
    temperature ``T = 200`` inside its loss (and re-initialises linear layers before scoring);
    ``loss_fn`` is used as given, so fold the temperature into it to match:
    ``lambda p, b: xent(apply(p, b[0]) / 200, b[1])``.

    **SynFlow** is data-free: every floating leaf is replaced by ``|theta|`` (biases and
    normalisation scales included, as the reference's ``linearize`` does) and masked, the network
    is run on ``ones_like(inputs)``, and each weight scores ``|dR/dtheta * theta|``. It prunes in
    ``rounds`` rounds (default 100), re-scoring the masked network each round, and pruned weights
    stay pruned: after round ``k`` of ``n`` the density is ``d^(k/n)``, with ``d`` the final
    density (each layer's at layer scope, the total at global scope); the last round lands exactly
    on the layout's counts. The rounds are one compiled ``lax.fori_loop``. Run ``apply_fn`` in
    inference mode: the reference scores in eval mode (BatchNorm on its running statistics, whose
    absolute values it also takes; in flax they live outside ``params``).

    **SynFlow's overflow.** ``R`` is a product over depth and overflows float32 in deep networks
    (the reference code stays in float32: its ``model.double()`` is commented out). Here float64
    is used when ``jax_enable_x64`` is on. In either precision, when ``R`` or a score is not finite,
    or ``R`` is outside ``[sqrt(tiny), sqrt(max)]`` of the dtype, every nonzero leaf is scaled by
    an exact power of two chosen so that it multiplies the signal by about one. Where ``R`` is
    positively homogeneous of degree one in each leaf, every score is then the plain score times
    one common power of two, bit for bit, so the masks are those of exact arithmetic: feed-forward
    chains of dense/conv kernels, pooling and ReLU (or identity) with zero biases, as initialised,
    and normalisation that is affine with zero shift. Other networks (nonzero biases, residual
    connections, LayerNorm, softmax, GELU, shared weights) are detected by Euler's identity
    ``sum_q dR/dtheta_q theta_q = R`` per leaf; their plain scores are used when finite, and
    otherwise a ``FloatingPointError`` says to enable float64.

    Errors that depend on values (SynFlow's ``R = 0`` or overflow) are raised when
    ``prune_at_init`` is called outside ``jit``; under an outer ``jit`` they cannot be.

    Compilation is cached on the layout, scope, rounds and the identity of ``loss_fn`` /
    ``apply_fn`` (define them once, not as a new ``lambda`` per call) and the shapes.

    Args:
      criterion: one of :data:`CRITERIA`.
      params: the parameter pytree at initialisation (dicts, flax linen ``variables``, ...).
      layout: which leaves are sparsified and their counts; the masks fit an algorithm built with it
        (``scope="layer"``) or with :func:`fit_layout` of it (``scope="global"``).
      key: orders ties, and draws the random criterion's scores (keyword-only).
      loss_fn: ``loss_fn(params, batch) -> scalar`` (SNIP, GraSP).
      batches: an iterable of batches for ``loss_fn`` (SNIP, GraSP), e.g. ``[batch]``.
      apply_fn: ``apply_fn(params, inputs) -> outputs`` (SynFlow).
      inputs: an example input array or pytree (SynFlow uses only its shape), e.g. ``x[:1]``.
      scope: ``"global"`` (one threshold over all layers) or ``"layer"`` (each layer's count).
      rounds: SynFlow's number of pruning rounds (``None``: 100); the other criteria score once.

    Arguments a criterion does not use are ignored.

    Returns:
      Masks as ``algorithm.init_masks`` returns them: ``bool`` arrays of each sparsified leaf's
      group-level mask shape, ``None`` at dense leaves; pass them to ``sparsify(..., masks=...)``.

    Raises:
      ValueError: an unknown criterion or scope; a missing ``loss_fn``/``batches``/``apply_fn``/
        ``inputs``; empty ``batches``; ``rounds > 1`` for a one-shot criterion; global scope with a
        row-wise structure; SynFlow's ``R`` is 0 (no path from input to output).
      FloatingPointError: SynFlow's ``R`` overflows and the network is not homogeneous (use float64).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsparse.masks import SparsityLayout
      >>> params = {"w": jnp.array([[0.5, -2.0], [1.0, 0.1]])}
      >>> layout = SparsityLayout(0.5, "uniform")
      >>> prune_at_init("magnitude", params, layout, key=jax.random.key(0))["w"].tolist()
      [[False, True], [True, False]]

    References:
      Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.
      Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020.
      Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
      conserving synaptic flow", NeurIPS 2020.
      Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019 (magnitude).
      Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022 (random).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(map(repr, CRITERIA))}.")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose 'global' (one threshold) or 'layer' (each layer's count).")
    check_pooled_scope(scope, layout, "scope")
    rounds = _check_rounds(criterion, rounds)
    plans = layout.plan(params)  # the layout's own errors (no sparsified leaf, bad patterns), before tracing
    if criterion == "random" and scope == "layer":
        return _random_layer(layout, params, key)
    if criterion in ("random", "magnitude"):
        return masks_from_scores(
            layout, params, _data_free_scores(layout, criterion, params, key), key=key, scope=scope
        )
    if criterion == "synflow":
        _missing(criterion, apply_fn=apply_fn, inputs=inputs)
        masks, status, failed_at = _synflow_masks(layout, scope, rounds, apply_fn, params, inputs, key)
        _raise_on_status(status, failed_at, rounds)
        return masks
    _missing(criterion, loss_fn=loss_fn, batches=batches)
    batches = list(batches)
    if not batches:
        raise ValueError(f"batches is empty: {criterion!r} needs at least one batch for loss_fn, e.g. [batch].")
    score = _criteria.snip_scores if criterion == "snip" else _criteria.grasp_scores
    scores = masks_from_leaves(params, score(loss_fn, params, batches, plans))
    reduction = "sum" if criterion == "grasp" else "norm"
    return masks_from_scores(layout, params, scores, key=key, scope=scope, reduction=reduction)
