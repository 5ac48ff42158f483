"""The tier is chosen in one place: T2I_TIER, else smoke under T2I_SMOKE, else gpu where CUDA is, else cpu."""
from __future__ import annotations

import os

import pytest
import torch

from t2i_helpers.cli import commands as cli
from t2i_helpers.cli.parser import UsageError, build_parser
from t2i_helpers.config import by_tier, env_flag, pick, smoke, tier, tier_config
from t2i_helpers.errors import T2IError


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("T2I_TIER", raising=False)
    monkeypatch.delenv("T2I_SMOKE", raising=False)
    return monkeypatch


@pytest.mark.parametrize("cuda, expected", [(False, "cpu"), (True, "gpu")])
def test_default_tier_follows_the_hardware(clean_env, cuda, expected):
    clean_env.setattr(torch.cuda, "is_available", lambda: cuda)
    assert tier() == expected and not smoke()


@pytest.mark.parametrize("value, expected", [("1", "smoke"), ("true", "smoke"), ("0", "cpu"), ("off", "cpu"), ("", "cpu")])
def test_t2i_smoke_means_the_smoke_tier(clean_env, value, expected):
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    clean_env.setenv("T2I_SMOKE", value)
    assert tier() == expected


def test_t2i_tier_overrides_smoke_and_hardware(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setenv("T2I_SMOKE", "1")
    clean_env.setenv("T2I_TIER", " CPU ")
    assert tier() == "cpu" and not smoke()


def test_an_unknown_tier_is_a_one_line_error(clean_env):
    clean_env.setenv("T2I_TIER", "laptop")
    with pytest.raises(T2IError, match="T2I_TIER='laptop' is not a tier; choose one of smoke, cpu, gpu"):
        tier()


def test_by_tier_and_pick(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    assert by_tier(1, 2, 3) == 2 and by_tier(1, 2, 3, "gpu") == 3 and pick("full", "small") == "full"
    clean_env.setenv("T2I_TIER", "smoke")
    assert by_tier(1, 2, 3) == 1 and pick("full", "small") == "small"


def test_env_flag(clean_env):
    for value, on in (("yes", True), ("2", True), ("no", False), ("FALSE", False)):
        clean_env.setenv("T2I_SMOKE", value)
        assert env_flag("T2I_SMOKE") is on
    clean_env.delenv("T2I_SMOKE")
    assert env_flag("T2I_SMOKE") is False


@pytest.mark.parametrize("command", [["train", "--model", "baseline", "--data", "a", "b", "--out", "o"],
                                     ["compare", "--data", "a", "b", "--out", "o"], ["demo"]])
def test_tier_flag_on_train_compare_and_demo(clean_env, command):
    args = build_parser(cli.HANDLERS).parse_args(command + ["--tier", "cpu"])
    assert args.tier == "cpu"
    with pytest.raises(UsageError, match="invalid choice: 'laptop'"):
        build_parser(cli.HANDLERS).parse_args(command + ["--tier", "laptop"])


def test_tier_flag_sets_the_tier_for_the_whole_command(clean_env):
    seen = {}
    clean_env.setenv("T2I_TIER", "gpu")  # so that the fixture restores the variable main() sets
    clean_env.setitem(cli.HANDLERS, "demo", lambda args: seen.setdefault("tier", tier()))  # read by build_parser
    assert cli.main(["demo", "--tier", "smoke"]) == 0
    assert seen["tier"] == "smoke" and os.environ["T2I_TIER"] == "smoke"


@pytest.mark.parametrize("family", ["baseline", "gan", "diffusion"])
def test_each_family_has_a_named_config_per_tier(clean_env, family):
    from t2i_helpers.models import build_model, default_config, model_classes

    config_cls, _ = model_classes(family)
    configs = {name: default_config(family, name) for name in ("smoke", "cpu", "gpu")}
    assert configs == {"smoke": config_cls.smoke(), "cpu": config_cls.cpu(), "gpu": config_cls()}
    assert configs["cpu"].image_size == 32 and configs["gpu"].image_size == 64
    clean_env.setenv("T2I_TIER", "cpu")
    assert default_config(family) == config_cls.cpu()  # the current tier's, when none is named
    model = build_model(family, configs["cpu"], text_dim=384)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_named_configs_do_not_move_with_the_environment(clean_env):
    from t2i_helpers.models.diffusion import DiffusionConfig

    plain = DiffusionConfig()
    clean_env.setenv("T2I_TIER", "smoke")
    assert DiffusionConfig() == plain and DiffusionConfig.cpu() == DiffusionConfig.cpu()


@pytest.mark.parametrize("name, steps, batch", [("smoke", 60, 8), ("cpu", 4500, 32), ("gpu", 5000, 128)])
def test_train_config_defaults_per_tier(clean_env, name, steps, batch):
    from t2i_helpers.train import TrainConfig

    clean_env.setenv("T2I_TIER", name)
    config = tier_config(TrainConfig)
    assert (config.steps, config.batch_size) == (steps, batch)
    assert config == getattr(TrainConfig, name)()  # the tier's named config
    assert TrainConfig() == TrainConfig.gpu()  # the plain defaults do not move with the environment
