"""Nonsense is refused before anything runs: each value out of its range, each option of the
wrong type, a plug-in a method does not take, a dataset the data root lacks, a path given as a
plug-in module. Through the command line as a user meets them (not a dry run): one line naming
what is wrong, exit 2, and the results root never made."""

import dataclasses
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpl.methods import register
from dpl.methods.registry import METHODS, method_config
from dplbench.cli import app
from dplbench.errors import ConfigError
from dplbench.request import LaunchRequest

RUN = ["run", "--suite", "smoke", "--seeds", "1"]


def refused(tmp_path: Path, args: list[str]) -> str:
    results = tmp_path / "results"
    out = CliRunner().invoke(app, [*args, "--results", str(results), "--data", str(tmp_path / "d")])
    assert out.exit_code == 2, out.output
    assert not results.exists(), "a refused run wrote under its results root"
    (line,) = [x for x in out.output.splitlines() if x.strip()]
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize(
    "override, words",
    [
        ("optim.epochs=-1", "optim.epochs=-1: must be 0 or more"),
        (
            "optim.epochs=0",
            "optim.epochs=0: method coop trains, so 1 or more (or optim.iterations)",
        ),
        ("optim.lr=0", "optim.lr=0.0: must be more than 0"),
        ("optim.batch_size=0", "optim.batch_size=0: must be 1 or more"),
        ("optim.momentum=1", "optim.momentum=1.0: must be at least 0 and below 1"),
        ("optim.betas=[0.9,1.2]", "optim.betas=(0.9, 1.2): must be at least 0 and below 1"),
        ("lora.dropout=1", "lora.dropout=1.0: must be at least 0 and below 1"),
        ("loss.kl=-2", "loss.kl=-2.0: must be 0 or more"),
        ("rer.lambda0=1.5", "rer.lambda0=1.5: must be at least 0 and below 1"),
        ("mag.tau=0", "mag.tau=0.0: must be more than 0"),
        ("iwtd.sigma=-0.1", "iwtd.sigma=-0.1: must be 0 or more"),
        ("prompts.n_ctx_text=-4", "prompts.n_ctx_text=-4: must be 0 or more"),
        ("optim.epochs=2.5", "optim.epochs: expected an integer, got 2.5"),
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ],
)
def test_a_value_out_of_range_is_one_line_before_anything_runs(tmp_path, override, words):
    line = refused(tmp_path, [*RUN, "--methods", "coop", override])
    assert line == f"error: method coop: {words}"


def test_each_method_checks_what_it_trains(tmp_path):
    assert "trains LoRA only, so 1 or more" in refused(
        tmp_path, [*RUN, "--methods", "clip_lora", "lora.rank=0"]
    )
    # DPL without LoRA is an ablation, not nonsense; zero-shot CLIP trains no epoch.
    assert method_config("dpl", {"lora": {"rank": 0}}).lora.rank == 0
    assert method_config("zsclip", {"optim": {"epochs": 0}}).optim.epochs == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--compile", "turbo"], "--compile 'turbo': choose one of default, reduce-overhead"),
        (["--seeds", "-1"], "--seeds -1: each 0 or more"),
        (["--gpus", "-2"], "--gpus -2 / --cpus None: GPUs >= 0, CPUs >= 1"),
        (["--fuse", "0"], "--fuse"),
        (["--plugin", "/home/me/lab_methods"], "plugin '/home/me/lab_methods': give a module"),
        (["--plugin", "lab_methods.py"], "give a module name (lab_methods, lab.methods)"),
        (["--plugin", "no_such_lab_module"], "no such module in this Python"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(tmp_path, args, words):
    assert words in refused(tmp_path, [*RUN, "--methods", "coop", *args])


def test_request_fields_are_checked_by_type_with_the_option_name():
    with pytest.raises(ConfigError, match=r"^--gpus 'eight': expected an integer$"):
        LaunchRequest.of(gpus="eight")
    with pytest.raises(ConfigError, match=r"^--seeds \(1, 'a'\): expected a list of integers$"):
        LaunchRequest.of(seeds=[1, "a"])
    with pytest.raises(ConfigError, match=r"^--resume 'yes': expected true or false$"):
        LaunchRequest.of(resume="yes")
    assert LaunchRequest.of(seeds=[1, 2]).what.seeds == (1, 2)  # a list means its tuple


def test_a_plugin_the_method_does_not_take_is_refused_at_planning(tmp_path, monkeypatch):
    line = refused(tmp_path, [*RUN, "--methods", "zsclip", "iwtd.enabled=true"])
    assert line == (
        "error: method zsclip: iwtd.enabled=true: method zsclip does not take the IWTD/RER/MAG "
        "plug-ins (they switch onto coop, maple, promptsrc, clip_lora, llamp and dpl)"
    )
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # registered for this test
    register("coop_plain", dataclasses.replace(method_config("coop"), method="coop_plain"),
             module="dpl.methods.base:PromptedCLIP", plugins=False)  # fmt: skip
    line = refused(tmp_path, [*RUN, "--methods", "coop_plain", "rer.enabled=true"])
    assert "rer.enabled=true: method coop_plain does not take" in line


def test_a_dataset_the_data_root_lacks_is_one_line_before_ray(tmp_path, monkeypatch):
    import dplbench.run.launcher as launcher

    monkeypatch.setattr(launcher, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    (tmp_path / "d").mkdir()
    line = refused(tmp_path, ["run", "--suite", "base2novel", "--datasets", "caltech101",
                              "--methods", "coop", "--seeds", "1"])  # fmt: skip
    assert line == (
        f"error: no shards for caltech101 under {tmp_path / 'd'}; make them with: dplbench data "
        f"convert --root $DATA --datasets caltech101 --out {tmp_path / 'd'}"
    )
    # A dry run plans for where the data lives: the same line as a note, exit 0.
    out = CliRunner().invoke(app, ["run", "--suite", "base2novel", "--datasets", "caltech101",
                                   "--methods", "coop", "--seeds", "1", "--dry-run",
                                   "--data", str(tmp_path / "d")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "not runnable here yet: no shards for caltech101" in out.output


def test_a_suite_file_out_of_range_names_its_key(tmp_path):
    suite = tmp_path / "mine.yaml"
    suite.write_text("protocol: fewshot\ndatasets: [caltech101]\nshots: [0, 4]\n")
    line = refused(tmp_path, ["run", "--suite", str(suite), "--dry-run"])
    assert line == "error: suite mine: shots=[0, 4]: each 1 or more"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
