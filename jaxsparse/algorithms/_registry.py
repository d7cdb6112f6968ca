"""The registry of algorithms: each registers its command-line name, its options and how to build it, once.

``jaxsparse train --method NAME``, the accuracy sweep, the FLOPs report and the shared conformance
tests iterate :func:`registered`, so an algorithm registered here is picked up by all of them.
Registering one is a single call, ``register(Method(...))``, beside the algorithm's own module.

A :class:`Method` builds its algorithm from :class:`Settings`: the run-level values every method
shares (sparsity, distribution, the mask-update grid) plus the method's own :class:`Option` values.

Example:
  >>> from jaxsparse.algorithms import registered
  >>> [method.name for method in registered()][:3]
  ['static', 'set', 'rigl']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jaxsparse.algorithms._base import SparseAlgorithm
from jaxsparse.masks import StructureSpec, Unstructured, fixed_sparsity, parse_structure

__all__ = ["Method", "ModelSpec", "Option", "Settings", "lookup", "register", "registered"]


class ModelSpec(NamedTuple):
    """The model a method will train, for methods that read its computation (SSL's coupled groups).

    Attributes:
      apply_fn: the model as ``apply_fn(params, inputs)``, its other collections bound.
      params: the parameter tree the algorithm sees; leaves may be :class:`jax.ShapeDtypeStruct`.
      inputs: a batch of inputs, or its :class:`jax.ShapeDtypeStruct`.
    """

    apply_fn: Callable
    params: Any
    inputs: Any


class Settings(NamedTuple):
    """The run-level settings a :class:`Method` builds its algorithm from.

    Attributes:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      dense_first_layer: keep the first sparsifiable layer dense.
      keep_dense: patterns of parameter names kept dense.
      structure: the mask structure (``None``: the factory's default, unstructured for most).
      update_every: steps between mask updates.
      begin_step: first step that may update masks.
      end_step: last step that may update masks.
      steps: the steps of the run's learning-rate schedule (``None``: not known; IMP's round).
      learning_rate: the inner optimizer's learning rate, a float or a schedule of the optimizer
        step (``None``: not known), for methods whose proximal step scales with it (SSL's).
      model: the model to be trained (``None``: not known), for methods that trace it.
      options: the method's own options by name (every option present, defaults filled in).
    """

    sparsity: float
    distribution: str = "erk"
    dense_first_layer: bool = False
    keep_dense: tuple[str, ...] = ()
    structure: StructureSpec | None = None
    update_every: int = 100
    begin_step: int = 0
    end_step: int | None = None
    steps: int | None = None
    learning_rate: Any = None
    model: ModelSpec | None = None
    options: Mapping[str, Any] = {}

    def factory_keywords(self) -> dict[str, Any]:
        """The shared settings as factory keywords: the layout's, and the mask-update grid's."""
        return dict(
            **self.layout_keywords(), update_every=self.update_every, begin_step=self.begin_step, end_step=self.end_step
        )

    def layout_keywords(self) -> dict[str, Any]:
        """The layout's settings as factory keywords (structure and keep_dense only when set)."""
        keywords = dict(distribution=self.distribution, dense_first_layer=self.dense_first_layer)
        if self.keep_dense:
            keywords["keep_dense"] = self.keep_dense
        if self.structure is not None:
            keywords["structure"] = self.structure
        return keywords


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting of one method, beyond the shared ones (a ``--flag`` of ``jaxsparse train``).

    Attributes:
      name: the setting's name (``--backward-sparsity`` on the command line for ``backward_sparsity``).
      kind: ``float``, ``int``, ``str`` or ``bool``.
      default: the value when it is not set (``None`` allowed: the method then derives one).
      help: one line for ``--help``.
      valid: ``valid(value, settings) -> bool``, checked before building.
      rule: what ``valid`` requires, for the error message.
    """

    name: str
    kind: type
    default: Any
    help: str
    valid: Callable[[Any, Settings], bool] = lambda value, settings: True
    rule: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered algorithm.

    Attributes:
      name: the command-line name (``--method NAME``).
      build: ``build(settings) -> SparseAlgorithm``.
      help: one line for ``--help``.
      options: the method's own settings.
      updates_masks: whether it changes masks on the ``begin_step / update_every / end_step`` grid.
      default_structure: the ``--structure`` it runs at when none is given (``None``: unstructured).
      default_sparsity: ``default_sparsity(options) -> float``, the sparsity when none is given
        (IMP's ``1 - (1 - p)^R``; ``None``: the structure's, else the caller's default).
      accepts_init: it can start from any plain masks at its layout's counts, so ``--init`` may
        choose them (:mod:`jaxsparse.pruning_at_init`).
    """

    name: str
    build: Callable[[Settings], SparseAlgorithm]
    help: str
    options: tuple[Option, ...] = ()
    updates_masks: bool = True
    default_structure: str | None = None
    default_sparsity: Callable[[Mapping[str, Any]], float] | None = None
    accepts_init: bool = False

    def settings(self, sparsity: float | None, options: Mapping[str, Any] | None = None, **shared: Any) -> Settings:
        """:class:`Settings` for this method: the given options, the rest at their defaults.

        Without ``structure=``, the method's ``default_structure`` applies; ``sparsity=None`` takes
        the sparsity a structure fixes (N:M's ``1 - N/M``), else the method's ``default_sparsity``.
        """
        values = {option.name: option.default for option in self.options}
        values.update({name: value for name, value in (options or {}).items() if name in values})
        if shared.get("structure") is None and self.default_structure is not None:
            shared["structure"] = parse_structure(self.default_structure)
        if sparsity is None:
            sparsity = fixed_sparsity(shared.get("structure") or Unstructured())
        if sparsity is None and self.default_sparsity is not None:
            sparsity = self.default_sparsity(values)
        if sparsity is None:
            raise ValueError(f"{self.name} needs a sparsity: its structure does not fix one.")
        return Settings(sparsity=sparsity, options=values, **shared)

    def make(self, sparsity: float | None, options: Mapping[str, Any] | None = None, **shared: Any) -> SparseAlgorithm:
        """``build(settings(...))``: the algorithm from keyword settings (see :class:`Settings`)."""
        return self.build(self.settings(sparsity, options, **shared))


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to the registry (once per name) and returns it.

    Raises:
      ValueError: another method already has this name, or an option clashes with a registered
        option of the same name but another type.
    """
    known = _METHODS.get(method.name)
    if known is not None and known != method:
        raise ValueError(f"an algorithm named {method.name!r} is already registered; choose another name.")
    for option in method.options:
        for other in _METHODS.values():
            for theirs in other.options:
                if theirs.name == option.name and theirs.kind is not option.kind:
                    raise ValueError(
                        f"option {option.name!r} of {method.name!r} has type {option.kind.__name__}, but "
                        f"{other.name!r} registered it as {theirs.kind.__name__}: rename one of them."
                    )
    _METHODS[method.name] = method
    return method


def registered() -> tuple[Method, ...]:
    """Every registered method, in registration order."""
    return tuple(_METHODS.values())


def lookup(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
      KeyError: no such method; the message lists the registered ones.
    """
    if name not in _METHODS:
        raise KeyError(f"no algorithm named {name!r} is registered; known: {', '.join(_METHODS)}.")
    return _METHODS[name]
