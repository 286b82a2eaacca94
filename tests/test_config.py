import subprocess
import sys

import pytest
from conftest import CONF, REPO, compose_cfg
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigAttributeError

from neurecon.build import build

GROUPS = ["dataset", "encoder", "field", "renderer", "optimizer", "trainer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg[group]["_target_"].startswith("neurecon.")


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "encoder"])
@pytest.mark.parametrize("field", [o for g, o in OPTIONS if g == "field"])
def test_every_encoder_field_pair_instantiates(option, field):
    cfg = compose_cfg(
        [f"encoder={option}", f"field={field}", "encoder.log2_table_size=12"]
        if option == "hashgrid"
        else [f"encoder={option}", f"field={field}"]
    )
    enc = instantiate(cfg.encoder)
    f = instantiate(cfg.field, encoder=enc)
    assert f.kind in ("sdf", "density")


def test_default_config_builds():
    run = build(compose_cfg(["dataset.resolution=16", "dataset.num_views=4"]))
    assert run.scene.name == "synthetic_torus_box" and run.field.kind == "sdf"


def test_unknown_option_and_key_fail_with_hydra_messages():
    with pytest.raises(ConfigCompositionException, match="field"):
        compose_cfg(["field=nosuchfield"])
    with pytest.raises(ConfigCompositionException, match="nosuchkey"):
        compose_cfg(["trainer.nosuchkey=1"])
    with pytest.raises(ConfigAttributeError):
        compose_cfg().trainer.nosuchkey  # noqa: B018  (struct mode)


def test_cli_prints_composed_config():
    res = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job", "field=nerf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert (
        "neurecon.fields.NeRFField" in res.stdout and "neurecon.data.SyntheticScene" in res.stdout
    )
