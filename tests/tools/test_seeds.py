"""Seeds are integers >= 0, refused by name before anything is created, whichever way they come: the
demo's --seed / --seeds, generate-data's --seed, ablate's --seeds, a config's seed, the library calls."""
from __future__ import annotations

import copy

import pytest

from dvflnet.cli import main
from dvflnet.data.synthetic import generate_dataset
from dvflnet.engine.config import DEFAULTS, ConfigError, check_config
from dvflnet.experiments.demo import DEMO_CONFIG, load_demo_config


@pytest.mark.parametrize("args,flag", [
    (["demo", "--seed", "-5"], "--seed"),
    (["demo", "--seeds", "1", "-1"], "--seeds"),
    (["generate-data", "ROOT", "--seed", "-1"], "--seed"),
    (["ablate", "--config", "x.yaml", "--seeds", "-2"], "--seeds"),
], ids=["demo-seed", "demo-seeds", "generate-data", "ablate"])
def test_a_negative_seed_on_the_command_line_names_its_flag_and_creates_nothing(tmp_path, monkeypatch, capsys, args, flag):
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "data") if a == "ROOT" else a for a in args]
    with pytest.raises(SystemExit) as stop:
        main(args + (["--output", str(tmp_path / "demo")] if args[0] == "demo" else []))
    assert stop.value.code == 2
    assert f"argument {flag}: expected an integer >= 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_negative_seed_through_the_library_or_a_config_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"^seed: expected an integer >= 0, got -1"):
        generate_dataset(tmp_path / "data", seed=-1)
    assert not (tmp_path / "data").exists()
    spec = load_demo_config(DEMO_CONFIG, ["output", str(tmp_path / "demo")])
    with pytest.raises(ConfigError, match=r"seed: expected an integer >= 0, got -5"):
        spec.with_seed(-5)
    cfg = copy.deepcopy(DEFAULTS)
    cfg["seed"] = -3
    with pytest.raises(ConfigError, match=r"seed"):
        check_config(cfg)
    assert not (tmp_path / "demo").exists()
