"""Property-based fuzzing of the untrusted run-folder loader (``neurecon.runs``).

Hypothesis writes saved configs that mix hostile ``_target_`` values, OmegaConf interpolations
(``oc.select``, ``oc.decode``, ``oc.env``, node references, nested and escaped ``${}``),
``_args_`` and ``_partial_``, the legacy keys that loading renames, YAML tags and path
arguments. Each goes through :func:`neurecon.runs.load_run_config`; whatever it accepts is then
instantiated the way ``build`` does, with Hydra's ``_locate`` instrumented. The invariant:
Hydra never locates a callable outside the allow-list, and no file appears outside the run
folder. Fixed seed and 1,000 examples here; ``-m slow`` runs 20,000.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import hydra._internal.instantiate._instantiate2 as hydra_instantiate
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from neurecon.errors import NeuReconError
from neurecon.runs import _allowed, load_run_config

pytest.importorskip("hypothesis")  # not on every machine the GPU suite runs on
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

FORBIDDEN = [
    "os.system",
    "posix.system",
    "numpy.savetxt",
    "numpy.save",
    "builtins.exec",
    "builtins.open",
    "subprocess.run",
    "shutil.copyfile",
    "pathlib.Path.write_text",
    "torch.save",
    "neurecon.data.io.np.save",  # numpy reached through a neurecon module attribute
    "neurecon.metrics.lpips._NumpyOnlyUnpickler",  # private
    "neurecon.atomic.atomic_write",  # a neurecon function, not a class
]
# Allowed classes that are cheap to really build; CSVLogger writes where its arguments say.
ALLOWED = [
    "neurecon.encoders.FrequencyEncoder",
    "neurecon.log.loggers.CSVLogger",
    "neurecon.log.loggers.NoneLogger",
]
LEGACY = {"dataset": "background", "renderer": "background", "field": "background"}
ENV_VAR = "NEURECON_FUZZ_TARGET"


def _base() -> dict:
    """A saved config's shape (small: what matters is where hostile parts can go)."""
    return {
        "dataset": {"_target_": "neurecon.data.synthetic.SyntheticScene", "resolution": 32},
        "encoder": {"_target_": "neurecon.encoders.FrequencyEncoder", "n_freqs": 4},
        "field": {"_target_": "neurecon.fields.NeuSField", "hidden": 32},
        "renderer": {"_target_": "neurecon.render.NeuSRenderer"},
        "optimizer": {"_target_": "neurecon.optim.OptimizerFactory", "lr": 1e-3},
        "trainer": {"max_steps": 2},
        "logger": {"_target_": "neurecon.log.loggers.NoneLogger"},
    }


names = st.one_of(st.sampled_from(FORBIDDEN), st.sampled_from(ALLOWED))  # half and half
keys = st.sampled_from(
    ["dataset.background_color", "renderer.background_color", "field.background_model",
     "dataset.evil", "trainer.evil", "nosuch.key"]
)  # fmt: skip


@st.composite
def target_expr(draw) -> str:
    """A ``_target_`` value: a name, or an interpolation that may resolve to one."""
    kind = draw(st.sampled_from(["plain", "select", "decode", "env", "ref", "nested", "escaped"]))
    name = draw(names)
    if kind == "plain":
        return name
    if kind == "select":
        return f"${{oc.select:{draw(keys)},{draw(names)}}}"
    if kind == "decode":
        return f"${{oc.decode:'\"{name}\"'}}"
    if kind == "env":
        return f"${{oc.env:{ENV_VAR},{name}}}"
    if kind == "ref":
        return f"${{{draw(keys)}}}"
    if kind == "nested":
        return f"${{oc.select:${{oc.decode:'\"{draw(keys)}\"'}},{name}}}"
    return f"\\${{oc.decode:'\"{name}\"'}}"  # an escaped interpolation: a literal after one pass


@st.composite
def path_arg(draw, outside: Path) -> str:
    return draw(
        st.sampled_from(
            [str(outside / "MARKER"), str(outside), "../../MARKER", "..", "log.csv", "sub/log.csv",
             f"${{oc.select:dataset.evil,{outside}}}", "/tmp/../" + str(outside).lstrip("/")]
        )
    )  # fmt: skip


@st.composite
def hostile_node(draw, outside: Path, depth: int = 0) -> dict:
    node: dict = {"_target_": draw(target_expr())}
    if draw(st.booleans()):
        args: list = [str(outside / "MARKER"), "import os; os.system('touch MARKER')"]
        if depth < 1 and draw(st.booleans()):
            args.append(draw(hostile_node(outside, depth + 1)))
        node["_args_"] = draw(st.sampled_from([args, {"a": args[0]}, args[0]]))
    if draw(st.booleans()):
        node["_partial_"] = draw(st.sampled_from([True, False, "${oc.decode:'true'}", "yes"]))
    if draw(st.booleans()):
        node["out_dir"] = draw(path_arg(outside))
    if draw(st.booleans()):
        node["filename"] = draw(path_arg(outside))
    if depth < 1 and draw(st.booleans()):
        node["inner"] = draw(hostile_node(outside, depth + 1))
    return node


@st.composite
def saved_config(draw, outside: Path) -> str:
    cfg = _base()
    for _ in range(draw(st.integers(0, 2))):
        where = draw(
            st.sampled_from(["dataset", "encoder", "field", "renderer", "optimizer", "logger",
                             "dataset.evil", "field.dir_encoder", "trainer.callbacks.x", "top"])
        )  # fmt: skip
        node = draw(hostile_node(outside))
        if where == "top":
            cfg["evil"] = node
        elif "." in where:
            head, *rest = where.split(".")
            d = cfg.setdefault(head, {})
            for k in rest[:-1]:
                d = d.setdefault(k, {})
            d[rest[-1]] = node
        else:
            cfg[where] = node
    for group in draw(st.lists(st.sampled_from(sorted(LEGACY)), unique=True, max_size=3)):
        hidden = "${oc.decode:'\"os.system\"'}"
        cfg[group][LEGACY[group]] = draw(st.sampled_from([*FORBIDDEN, hidden]))
    text = yaml.safe_dump(cfg, sort_keys=False)
    if draw(st.booleans()):  # a YAML tag that an unsafe loader would turn into a call
        tag = draw(
            st.sampled_from(["!!python/object/apply:os.system", "!!python/name:os.system",
                             "!!python/object/new:subprocess.Popen"])
        )  # fmt: skip
        text += f"tagged: {tag} [touch {outside / 'MARKER'}]\n"
    return text


class _Located(Exception):
    pass


def _fuzz(n_examples: int) -> dict[str, int]:
    """Run ``n_examples`` generated configs; return the outcome counts."""
    counts = {"generated": 0, "refused": 0, "built": 0, "forbidden_located": 0}
    located: list[str] = []
    real_locate = hydra_instantiate._locate

    def spy_locate(path: str):
        located.append(path)
        if not _allowed(path):
            counts["forbidden_located"] += 1
            raise _Located(path)  # record it, never call it
        # allowed: the cheap ones really run; the rest (a scene, a field) are not built here
        return real_locate(path) if path in ALLOWED else (lambda *a, **k: None)

    base = Path(tempfile.mkdtemp(prefix="neurecon-fuzz-"))
    outside, runs = base / "outside", base / "runs"
    outside.mkdir()
    runs.mkdir()
    os.environ[ENV_VAR] = "os.system"  # what oc.env would hand over if it were allowed
    cwd = Path.cwd()

    @seed(20261201)
    @settings(
        max_examples=n_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(text=saved_config(outside))
    def one(text: str) -> None:
        counts["generated"] += 1
        run = runs / f"run{counts['generated']}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(text)
        try:
            cfg = load_run_config(run)
        except NeuReconError:
            counts["refused"] += 1
            return
        counts["built"] += 1
        assert isinstance(cfg, DictConfig)
        os.chdir(run)  # a logger with no out_dir writes into the current folder
        try:
            for key in cfg:  # as build() does, group by group
                node = cfg[key]
                if isinstance(node, DictConfig) and "_target_" in node:
                    with contextlib.suppress(Exception):  # a bad argument may fail the call
                        instantiate(node)
        finally:
            os.chdir(cwd)
        assert not any(outside.iterdir()), f"a file was written outside the run:\n{text}"

    hydra_instantiate._locate = spy_locate
    try:
        one()
    finally:
        hydra_instantiate._locate = real_locate
        os.environ.pop(ENV_VAR, None)
    assert not [p for p in located if not _allowed(p)], sorted(set(located))
    return counts


def test_fuzzed_saved_configs_never_locate_a_forbidden_callable():
    counts = _fuzz(1000)
    print("fuzz:", counts)
    assert counts["generated"] >= 1000
    assert counts["forbidden_located"] == 0
    # Both paths are exercised: the generator is not refusing everything at parse time.
    assert counts["built"] >= 50 and counts["refused"] >= 200, counts


@pytest.mark.slow
def test_fuzzed_saved_configs_long_run():
    counts = _fuzz(20000)
    print("fuzz:", counts)
    assert counts["forbidden_located"] == 0
