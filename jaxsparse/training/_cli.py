"""The ``jaxsparse`` command line: ``jaxsparse train [flags]`` and ``jaxsparse compact RUN_DIR``.

Every :class:`~jaxsparse.training.Config` field is a flag (``batch_size`` -> ``--batch-size``),
generated from the field's type and help text, so the CLI can never fall behind the config.
Settings are read in this order, later ones winning: the defaults, ``--config FILE`` (TOML or
JSON), then the flags given on the command line. ``--resume DIR`` starts from the settings saved
in ``DIR/config.json`` instead of the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from jaxsparse.data import DatasetNotPreparedError
from jaxsparse.training._cache import compilation_cache
from jaxsparse.training._compact_run import add_compact_parser, run_compact_command
from jaxsparse.training._config import (
    CHOICES,
    Config,
    ConfigError,
    base_type,
    method_names,
    method_options,
    read_settings,
)
from jaxsparse.training._loop import train

__all__ = ["build_parser", "main"]

_ALIASES = {"learning_rate": ["--lr"], "out_dir": ["--out"]}


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxsparse`` argument parser, with its ``train`` and ``compact`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="jaxsparse", description="Sparse training in JAX (SET, RigL, Top-KAST, static, gradual magnitude)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser(
        "train",
        help="train a model and write metrics, checkpoints, a summary and plots",
        description=(
            "Train a model sparsely and write config.json, metrics.jsonl/.csv, checkpoints/, summary.json and "
            "plots into the results folder. With no flags: RigL at 90% sparsity (ERK) training LeNet-5 on MNIST-1D, "
            "about a minute on 2 CPU cores. Settings are taken from the defaults, then --config FILE, then the flags."
        ),
    )
    run = train_parser.add_argument_group("run")
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML or JSON file of settings (field = value)")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its latest checkpoint (its saved config.json is the starting point)",
    )
    run.add_argument(
        "--compilation-cache",
        type=Path,
        metavar="DIR",
        help="keep XLA's compiled programs in DIR and reuse them in later runs (saves most of the start-up time)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    settings = train_parser.add_argument_group("settings (default: the value shown)")
    hints = typing.get_type_hints(Config)
    choices = {"method": method_names(), **CHOICES}
    entries = [
        (field.name, base_type(hints[field.name]), field.metadata["help"], field.default)
        for field in dataclasses.fields(Config)
        if field.name != "options"
    ]
    entries += [(option.name, option.kind, option.help, option.default) for option in method_options().values()]
    for name, kind, help_line, default in entries:
        flags = [f"--{name.replace('_', '-')}", *_ALIASES.get(name, [])]
        help_text = help_line + ("" if default is None else f" (default: {default})")
        if kind is bool:
            settings.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        settings.add_argument(
            *flags,
            dest=name,
            type=kind,
            choices=choices.get(name),
            # SUPPRESS: an absent flag leaves the file's (or saved run's) value alone.
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=None if name in choices else "DIR" if name.endswith("_dir") else kind.__name__.upper(),
        )
    add_compact_parser(commands)
    return parser


def _config(args: argparse.Namespace) -> Config:
    """The defaults, then the resumed run's saved settings, then ``--config``, then the flags."""
    overrides = {} if args.config is None else read_settings(args.config)
    names = [f.name for f in dataclasses.fields(Config) if f.name != "options"] + list(method_options())
    overrides.update({name: getattr(args, name) for name in names if hasattr(args, name)})
    if args.resume is None:
        return Config.from_dict(overrides)
    if not args.resume.is_dir():
        raise ConfigError(f"--resume {args.resume}: no such folder; give the results folder of an earlier run.")
    saved = args.resume / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume {args.resume}: no config.json there; is it a jaxsparse results folder?")
    if overrides.get("out_dir") is not None and Path(overrides["out_dir"]).absolute() != args.resume.absolute():
        raise ConfigError("--resume DIR continues the run in DIR: leave out --out / out_dir, or give DIR itself.")
    return Config.from_dict({**read_settings(saved), **overrides, "out_dir": str(args.resume)})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxsparse`` command (``[project.scripts]``).

    Args:
      argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
      The exit status: 0 on success, 2 on a bad setting (with a message on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compact":
        try:
            run_compact_command(args)
        except (ConfigError, DatasetNotPreparedError) as error:
            parser.exit(2, f"jaxsparse compact: error: {error}\n")
        return 0
    try:
        config = _config(args)
        with contextlib.ExitStack() as stack:
            if args.compilation_cache is not None:
                stack.enter_context(compilation_cache(args.compilation_cache))
            result = train(config, resume=args.resume is not None, progress=not args.quiet)
    except (ConfigError, DatasetNotPreparedError) as error:
        parser.exit(2, f"jaxsparse train: error: {error}\n")
    final = result.metrics[-1]
    # The loop's own clock (compilation, evaluations and checkpoints included; summed over resumed
    # sessions), not the process's: start-up, imports and the final report come on top, so say so.
    print(
        f"{config.method} on {config.dataset}/{config.model}: test accuracy {final['test_accuracy']:.4f}, "
        f"sparsity {final['sparsity']:.4f}, {result.report['wall_time']:.1f} s in the training loop; "
        f"results in {result.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
