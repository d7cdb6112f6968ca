"""What a run shows and ships: the progress bar, the final line, plot titles, the example files.

One ``jaxsparse train`` run of ``examples/run.toml`` (the README's ``--config`` line) serves the
progress-bar, final-line and plot tests. Its size flags are test_cli's, so in a full session its
compiled programs come from the shared cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import jaxsparse as jsp
from jaxsparse.inspection import LayerStats
from jaxsparse.training import Config, _loop, build_parser, compilation_cache, main, read_settings
from jaxsparse.training._cli import _config

ROOT = Path(__file__).parents[1]
RUN_TOML = ROOT / "examples" / "run.toml"
DISTRIBUTED = ROOT / "examples" / "train_distributed.py"
SIZE_FLAGS = ["--steps", "40", "--batch-size", "32", "--update-every", "5"]  # test_cli's FLAGS


def test_package_namespace_is_its_all_and_its_subpackages():
    """``from importlib.metadata import version`` once made ``jaxsparse.version`` public."""
    extra = {name for name in dir(jsp) if not name.startswith("_")} - set(jsp.__all__)
    # Importing a subpackage (jaxsparse.training, jaxsparse.data, ...) binds it on the package.
    leaked = {
        name
        for name in extra
        if not (isinstance(getattr(jsp, name), types.ModuleType) and getattr(jsp, name).__name__ == f"jaxsparse.{name}")
    }
    assert leaked == set()
    assert all(hasattr(jsp, name) for name in jsp.__all__)


def test_the_readme_config_file_is_shipped_and_valid():
    (line,) = [line for line in (ROOT / "README.md").read_text().splitlines() if "train --config" in line]
    path = ROOT / re.search(r"--config (\S+)", line).group(1)
    assert path == RUN_TOML
    settings = read_settings(path)
    config = _config(build_parser().parse_args(["train", "--config", str(path)]))
    assert config == Config.from_file(path)
    # Every key of the file reaches the config (a method option too), with its value.
    assert {name: config.to_dict()[name] for name in settings} == settings


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """``jaxsparse train --config examples/run.toml`` (smaller), recording its bar and its steps' times."""
    bars, returned = [], []

    class RecordingBar(_loop.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    def timed_make_train_step(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def timed(*step_args):
            outputs = step(*step_args)
            returned.append(time.time())  # tqdm's clock
            return outputs

        return timed

    make_train_step = _loop.make_train_step
    out = tmp_path_factory.mktemp("example") / "run"
    printed = io.StringIO()
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(_loop, "tqdm", RecordingBar)
        patch.setattr(_loop, "make_train_step", timed_make_train_step)
        stack.enter_context(compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache"))
        stack.enter_context(contextlib.redirect_stdout(printed))
        argv = ["train", "--config", str(RUN_TOML), *SIZE_FLAGS, "--eval-every", "20", "--out", str(out)]
        assert main(argv) == 0
    return types.SimpleNamespace(out=out, bars=bars, returned=returned, printed=printed.getvalue())


def test_example_config_trains(example_run):
    summary = json.loads((example_run.out / "summary.json").read_text())
    assert (summary["config"]["method"], summary["config"]["steps"]) == ("rigl", 40)
    assert abs(summary["sparsity"] - 0.9) < 1e-3


def test_progress_bar_clock_starts_after_the_compiling_step(example_run):
    """Timed from its creation, the bar's first estimate was compilation: "16 s/step, 27 h" left."""
    (bar,) = example_run.bars
    assert len(example_run.returned) == 40
    assert bar.start_t >= example_run.returned[0]


def test_final_line_names_the_training_loop_clock(example_run):
    """The time printed is the loop's, not the process's (start-up and imports come on top): it says so."""
    summary = json.loads((example_run.out / "summary.json").read_text())
    match = re.search(r"sparsity \d\.\d+, (\d+\.\d) s in the training loop; results in (\S+)", example_run.printed)
    assert match, example_run.printed
    assert float(match.group(1)) == round(summary["wall_time"], 1)
    assert match.group(2) == str(example_run.out)


def test_plot_titles_name_the_run(example_run):
    from jaxsparse.training import run_figures

    rows = [json.loads(line) for line in (example_run.out / "metrics.jsonl").read_text().splitlines()]
    layers = json.loads((example_run.out / "summary.json").read_text())["layers"]
    stats = [
        LayerStats(s["name"], tuple(s["shape"]), s["size"], s["active"], s["nonzero"], s["sparsified"]) for s in layers
    ]
    config = Config.from_file(example_run.out / "config.json")
    figures = run_figures(rows, stats, config)
    assert sorted(figures) == sorted(path.name for path in example_run.out.glob("*.png"))
    for figure in figures.values():
        assert figure.get_suptitle() == "rigl, 90% sparse (erk): mlp on digits"
    assert "changed" in figures["mask_change.png"].axes[0].get_ylabel()
    dense = run_figures(rows, stats, config.replace(method="dense"))
    assert dense["curves.png"].get_suptitle() == "dense: mlp on digits"


def _example(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "layout, sentence",
    [
        (dict(replicas=8, shards=1, processes=1), "all 8 replicas hold"),
        (dict(replicas=4, shards=2, processes=1), "all 4 replicas (each sharded over 2 devices) hold"),
        (dict(replicas=4, shards=1, processes=2), "all 4 replicas on 2 processes hold"),
    ],
)
def test_distributed_example_says_in_words_that_replicas_agree(layout, sentence, monkeypatch, capsys):
    """It printed only JSON hashes; the check it passed (assert_replicas_equal) now reads as a sentence."""
    example = _example(DISTRIBUTED)
    results = {"mode": "pmap", **layout, "fingerprint": "0x0123abcd"}
    monkeypatch.setattr(example, "_train", lambda args: results)
    assert example.main(["pmap"]) == 0
    line, printed = capsys.readouterr().out.splitlines()
    assert line == f"{sentence} identical masks, params and optimizer state (fingerprint 0x0123abcd)"
    assert json.loads(printed) == results


# Connects gloo over 2 devices, mutes as the example's workers do, then over 3: a new clique, whose
# connection lines gloo writes to file descriptor 1 with std::cout whatever flags are set.
_GLOO_PROBE = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import train_distributed

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[2], num_processes=1, process_id=0)

def total(n):
    mesh = jax.make_mesh((n,), ("d",), devices=jax.devices()[:n])
    x = jax.device_put(jnp.arange(float(n)), NamedSharding(mesh, P("d")))
    return float(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x))

print("sum over 2 devices:", total(2), flush=True)
train_distributed.mute_native_stdout()
print("sum over 3 devices:", total(3))
jax.distributed.shutdown()
"""


def test_distributed_example_mutes_gloo_connection_lines_and_keeps_its_own():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{sock.getsockname()[1]}"
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    command = [sys.executable, "-c", _GLOO_PROBE, str(DISTRIBUTED), coordinator]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    # Before muting, gloo printed a line for each device of the 2-device clique (the symptom); after
    # it, none for the 3-device one, while the probe's own output still arrives.
    assert run.stdout.count("[Gloo] Rank") == 2 and "connected to 2 peer ranks" not in run.stdout
    assert run.stdout.splitlines()[-2:] == ["sum over 2 devices: 1.0", "sum over 3 devices: 3.0"]
