"""The run configuration: one frozen dataclass holding every setting of a training run.

Why a frozen dataclass and not ``ml_collections.ConfigDict``:

* **typed**: every field has a Python type; files are checked and coerced against it (a TOML
  ``sparsity = 1`` becomes ``1.0``, a string where an int belongs is an error naming the field);
* **hashable and immutable**: a config is a value. It cannot drift during a run, and two runs with
  equal configs are the same run (resuming compares them field by field);
* **validated once**, in ``__post_init__``, with messages that name the field and the fix, so no
  bad value reaches the training loop;
* **no extra dependency**: ``dataclasses``, ``json`` and ``tomllib`` (Python 3.11+) are standard;
* **round-trips**: :meth:`Config.to_dict` is plain JSON (saved as ``config.json`` in every results
  folder) and :meth:`Config.from_dict` / :meth:`Config.from_file` read it back, or a TOML file.

The command line (:mod:`jaxsparse.training._cli`) is generated from the fields below, their types
and their ``help`` metadata, so a new setting is one new field. Methods come from the algorithm
registry (:func:`jaxsparse.algorithms.registered`): each one's own options (``drop_fraction``,
``backward_sparsity``, ...) are settings too, kept in :attr:`Config.options` and written at the top
level of files and flags like every other setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxsparse.algorithms import SCOPES, Option, Settings, lookup, registered
from jaxsparse.data import DATASETS
from jaxsparse.distributions import DISTRIBUTIONS
from jaxsparse.masks import fixed_sparsity, parse_structure
from jaxsparse.models import MODELS
from jaxsparse.pruning_at_init import CRITERIA

__all__ = [
    "CHOICES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "Config",
    "ConfigError",
    "method_names",
    "method_options",
    "read_settings",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")


def method_names() -> tuple[str, ...]:
    """``"dense"`` and every registered algorithm, in registration order."""
    return ("dense", *(method.name for method in registered()))


def method_options() -> dict[str, Option]:
    """Every registered algorithm's own options by name (a name shared by several methods is one option)."""
    options: dict[str, Option] = {}
    for method in registered():
        for option in method.options:
            options.setdefault(option.name, option)
    return options


CHOICES: dict[str, tuple[str, ...]] = {
    "distribution": DISTRIBUTIONS,
    "dataset": DATASETS,
    "model": MODELS,
    "optimizer": OPTIMIZERS,
    "lr_schedule": LR_SCHEDULES,
    "init": CRITERIA,
    "init_scope": SCOPES,
}
"""The settings that take one of a fixed set of names, and those names (methods: :func:`method_names`)."""
# Mask updates stop at 75% of training by default, as in RigL (Evci et al. 2020).
DEFAULT_END_FRACTION = 0.75


class ConfigError(ValueError):
    """A setting is missing, unknown, of the wrong type or out of range; the message says which."""


def _field(default: Any, help: str, *, bookkeeping: bool = False) -> Any:
    """A config field with its ``--help`` text.

    ``bookkeeping`` fields (where results go, how often to evaluate or save) may change when a run
    is resumed; every other field defines the trajectory and must match the checkpoint.
    """
    return dataclasses.field(default=default, metadata={"help": help, "bookkeeping": bookkeeping})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting of one training run (see the module docstring for why a frozen dataclass).

    Example:
      >>> config = Config(method="set", sparsity=0.8, steps=100)
      >>> config.mask_end_step
      75
      >>> Config.from_dict(config.to_dict()) == config
      True
    """

    method: str = _field("rigl", "training method: dense or a registered algorithm (see --method's choices)")
    sparsity: float | None = _field(
        None,
        "global sparsity of the sparsified kernels, in [0, 1) (default: 0.9; with an N:M structure 1 - N/M; imp: "
        "what its rounds reach, 1 - (1 - imp_fraction)^imp_rounds; dense: 0)",
    )
    structure: str | None = _field(
        None,
        "mask structure: unstructured, N:M (2:4, 1:4, 2:8, 1:16), block:BHxBW (block:8x8), channel (neurons and "
        "filters), input_channel, heads (attention heads, neurons elsewhere) or fan_in (constant fan-in); default: "
        "the method's (2:4 for nm_ste/nm_sr_ste, fan_in for srigl, else unstructured)",
    )
    distribution: str = _field("erk", f"how the sparsity is spread over layers: {', '.join(DISTRIBUTIONS)}")
    dataset: str = _field("mnist1d", f"dataset: {', '.join(DATASETS)}")
    model: str = _field("lenet5", f"model: {', '.join(MODELS)}")
    steps: int = _field(6000, "number of training steps (imp: of each round, the learning-rate schedule's length)")
    batch_size: int = _field(128, "training batch size")
    optimizer: str = _field("adamw", f"inner optimizer: {', '.join(OPTIMIZERS)} (sgd uses --momentum)")
    learning_rate: float = _field(3e-3, "peak learning rate")
    lr_schedule: str = _field("cosine", f"learning-rate schedule after warmup: {', '.join(LR_SCHEDULES)}")
    warmup_steps: int = _field(0, "steps of linear warmup from 0 to the peak learning rate")
    momentum: float = _field(0.9, "momentum of sgd (ignored by adam/adamw)")
    weight_decay: float = _field(1e-4, "weight decay of the kernels (adamw: decoupled; sgd/adam: L2 added to grads)")
    clip_norm: float = _field(1.0, "clip gradients to this global norm (0 disables clipping)")
    update_every: int = _field(50, "steps between mask updates (set, rigl, top_kast, gradual_magnitude)")
    dense_first_layer: bool = _field(
        False, "keep the first sparsifiable layer dense (RigL's uniform distribution does, Evci et al. 2020)"
    )
    keep_dense: str | None = _field(
        None,
        "regular expression of parameter names kept dense, e.g. 'Conv' or 'Dense_2' (a structure that does not "
        "divide a layer names it; keep it dense this way)",
    )
    init: str | None = _field(
        None,
        f"initial masks scored at initialisation: {', '.join(CRITERIA)} (jaxsparse.pruning_at_init; default: the "
        "method's own, random for static, set, rigl and snfs)",
    )
    init_scope: str = _field(
        "global", "--init's threshold: global (one over all layers, the papers') or layer (the distribution's counts)"
    )
    init_rounds: int | None = _field(None, "--init's pruning rounds (default: 100 for synflow, 1 for the others)")
    begin_step: int = _field(0, "first step that may update masks")
    end_step: int | None = _field(None, "last step that may update masks (default: 75%% of --steps)")
    options: tuple[tuple[str, Any], ...] = _field(
        (), "the methods' own settings, (name, value) pairs; in files and flags they are top-level settings"
    )
    eval_every: int = _field(500, "steps between evaluations on the test split", bookkeeping=True)
    eval_batch_size: int = _field(1000, "batch size of evaluation", bookkeeping=True)
    checkpoint_every: int = _field(1000, "steps between checkpoints", bookkeeping=True)
    keep_checkpoints: int = _field(3, "how many of the latest checkpoints to keep", bookkeeping=True)
    seed: int = _field(0, "seed of the model initialisation, the data order and the masks")
    data_dir: str | None = _field(None, "where datasets are cached (default: the data module's)", bookkeeping=True)
    out_dir: str | None = _field(
        None, "results folder (default: runs/<method>-<model>-<dataset>-<time>)", bookkeeping=True
    )

    def __post_init__(self) -> None:
        options = self.options.items() if isinstance(self.options, Mapping) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in options)))
        self._resolve_structure()
        self._validate()

    def _resolve_structure(self) -> None:
        """Fills in the method's default structure and the sparsity it implies, refusing a conflict."""
        default = None if self.method not in method_names() or self.method == "dense" else lookup(self.method)
        if self.structure is None:
            chosen = default.default_structure if default is not None else None
            object.__setattr__(self, "structure", chosen or "unstructured")
        try:
            fixed = parse_structure(self.structure)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        fixed = fixed_sparsity(fixed)
        if self.method == "dense":
            # A dense run has no masks; recording 0 keeps summaries and plots of sparsity truthful.
            object.__setattr__(self, "sparsity", 0.0)
        elif self.sparsity is None:
            if fixed is None and default is not None and default.default_sparsity is not None:
                fixed = default.default_sparsity({option.name: self.option(option.name) for option in default.options})
            object.__setattr__(self, "sparsity", 0.9 if fixed is None else fixed)
        elif fixed is not None and abs(self.sparsity - fixed) > 1e-9:
            raise ConfigError(
                f"sparsity={self.sparsity!r} conflicts with structure={self.structure!r}, which fixes the sparsity "
                f"of every layer at {fixed:.6g}: leave --sparsity out (it then defaults to {fixed:.6g}) or pass "
                f"{fixed:.6g}."
            )

    def _validate(self) -> None:
        for name, choices in {"method": method_names(), **CHOICES}.items():
            value = getattr(self, name)
            if value not in choices and not (value is None and _FIELD_DEFAULTS[name] is None):
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{name}={value!r} is not known{hint}; choose one of {', '.join(choices)}.")
        _check(0.0 <= self.sparsity < 1.0, "sparsity", self.sparsity, "must be in [0, 1), e.g. 0.9")
        for name in ("steps", "batch_size", "update_every", "eval_every", "eval_batch_size", "checkpoint_every"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "must be a positive integer")
        _check(self.seed >= 0, "seed", self.seed, "must be a non-negative integer")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "must be at least 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be positive, e.g. 1e-3")
        _check(
            0 <= self.warmup_steps < self.steps,
            "warmup_steps",
            self.warmup_steps,
            f"must be in [0, steps={self.steps})",
        )
        _check(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0 (0 disables it)")
        _check(self.clip_norm >= 0, "clip_norm", self.clip_norm, "must be >= 0 (0 disables clipping)")
        if self.keep_dense is not None:
            try:
                re.compile(self.keep_dense)
            except re.error as error:
                raise ConfigError(
                    f"keep_dense={self.keep_dense!r} is not a regular expression ({error}); e.g. 'Conv' or 'Dense_2'."
                ) from None
        if self.init is not None:
            takers = [method.name for method in registered() if method.accepts_init]
            _check(
                self.method in takers,
                "init",
                self.init,
                f"--method {self.method} chooses its own initial masks; --init works with {', '.join(takers)}",
            )
        if self.init_rounds is not None:
            _check(self.init_rounds >= 1, "init_rounds", self.init_rounds, "must be a positive integer")
        if self.end_step is not None:
            _check(self.end_step <= self.steps, "end_step", self.end_step, f"must be at most steps={self.steps}")
        known = method_options()
        for name, value in self.options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown method option {name!r}{hint}; options are {', '.join(known)}.")
            option = known[name]
            _check(option.valid(value, self.settings()), name, value, option.rule)
        if self.method != "dense" and lookup(self.method).updates_masks:
            _check(
                0 <= self.begin_step < self.mask_end_step,
                "begin_step",
                self.begin_step,
                f"must be >= 0 and before the last mask-update step {self.mask_end_step} (end_step, by default 75% "
                "of steps): the drop-fraction and pruning schedules run from begin_step to end_step",
            )

    @property
    def mask_end_step(self) -> int:
        """The last step that may update masks: ``end_step``, or 75% of ``steps`` as in RigL."""
        return self.end_step if self.end_step is not None else int(DEFAULT_END_FRACTION * self.steps)

    def option(self, name: str) -> Any:
        """The value of a method option: as set, else its registered default."""
        return dict(self.options).get(name, method_options()[name].default)

    def settings(self) -> Settings:
        """What :meth:`jaxsparse.algorithms.Method.build` builds this run's algorithm from."""
        return Settings(
            sparsity=self.sparsity,
            distribution=self.distribution,
            dense_first_layer=self.dense_first_layer,
            keep_dense=() if self.keep_dense is None else (self.keep_dense,),
            structure=parse_structure(self.structure),
            update_every=self.update_every,
            begin_step=self.begin_step,
            end_step=self.mask_end_step,
            steps=self.steps,
            options={name: self.option(name) for name in method_options()},
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict (field order, then the method options set)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**values, **dict(self.options)}

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated like a new config)."""
        return Config.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        """A config from a mapping such as a parsed JSON or TOML file; missing keys take defaults.

        Raises:
          ConfigError: on an unknown key (with the closest known one) or a value of the wrong type.
        """
        hints = typing.get_type_hints(cls)
        known = method_options()
        names = [f.name for f in dataclasses.fields(cls) if f.name != "options"] + list(known)
        options = dict(values.get("options", ()))
        options.update(
            {key: _coerce(key, value, known[key].kind | None) for key, value in values.items() if key in known}
        )
        values = {key: value for key, value in values.items() if key not in known and key != "options"}
        unknown = [key for key in values if key not in hints]
        if unknown:
            hints_text = []
            for key in unknown:
                close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
                hints_text.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown setting {', '.join(hints_text)}; known settings are {', '.join(names)}.")
        return cls(**{key: _coerce(key, value, hints[key]) for key, value in values.items()}, options=options)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Reads a ``.toml`` or ``.json`` file of settings (see :func:`read_settings`); the rest take defaults."""
        return cls.from_dict(read_settings(path))

    def save(self, path: str | Path) -> None:
        """Writes the settings as JSON (read back with :meth:`from_file`).

        The file is written beside ``path`` and renamed over it, so a process killed meanwhile
        leaves the previous file whole (``--resume`` reads it).
        """
        path = Path(path)
        partial = path.with_name(f"{path.name}.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(partial, path)

    def mismatches(self, other: Config) -> list[str]:
        """Names of the trajectory-defining fields on which two configs differ (bookkeeping excluded)."""
        fields = [
            f.name
            for f in dataclasses.fields(self)
            if f.name != "options" and not f.metadata["bookkeeping"] and getattr(self, f.name) != getattr(other, f.name)
        ]
        return fields + [name for name in method_options() if self.option(name) != other.option(name)]


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings a ``.toml`` or ``.json`` file sets, unvalidated (a TOML ``[train]`` table also works).

    Raises:
      ConfigError: the file is missing, unreadable, or not a table of settings.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    if path.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise ConfigError("reading TOML needs Python 3.11+ (tomllib); use a .json config instead.")
        import tomllib

        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        values = values.get("train", values)
    elif path.suffix == ".json":
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
    else:
        raise ConfigError(f"config file {str(path)!r} must end in .toml or .json.")
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a table of settings, got {type(values).__name__}.")
    return values


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {rule}.")


def base_type(hint: Any) -> type:
    """``int`` for ``int`` or ``int | None``: the type a set value must have."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner
    return hint


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type: ints are accepted for floats, nothing else is converted."""
    if value is None and base_type(hint) is not hint:
        return None
    kind = base_type(hint)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r} must be of type {kind.__name__}, got {type(value).__name__}.")
    return value


_FIELD_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Config)}
