"""Issue 19's faster path: bf16 autocast where the CPU has it (and fp32 where it doesn't),
the adaptive softmax as the default for new runs, and older runs loading as they were."""

import dataclasses
import json

import pytest
import torch
from helpers import TINY, tiny

import poetvae.train
from poetvae import hardware, rundir
from poetvae.config import config_from_json, load_config
from poetvae.decode import DecodeOptions
from poetvae.hardware import autocast_choice, cpu_has_bf16
from poetvae.poet import Poet
from poetvae.train import train

CPU = torch.device("cpu")
ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
SKYLAKE = {"avx2", "avx512f", "avx512bw"}  # AVX-512 without a native bf16 path


def test_autocast_follows_the_cpu_flags_and_the_setting():
    assert cpu_has_bf16(ZEN4) and cpu_has_bf16({"amx_bf16"}) and not cpu_has_bf16(SKYLAKE)
    use, why = autocast_choice(CPU, "auto", ZEN4)
    assert use and "avx512_bf16" in why
    use, why = autocast_choice(CPU, "auto", SKYLAKE)
    assert not use and why.startswith("fp32") and "no native bf16" in why
    assert autocast_choice(CPU, "cuda", ZEN4) == (False, "fp32 (amp = cuda on cpu)")  # the old meaning of amp = true
    assert autocast_choice(CPU, "off", ZEN4)[0] is False
    assert autocast_choice(torch.device("cuda"), "auto", set())[0] is True
    assert autocast_choice(torch.device("cuda"), "off", set())[0] is False


@pytest.mark.parametrize("flags,want", [(ZEN4, True), (SKYLAKE, False)])
def test_training_uses_bf16_only_on_a_cpu_that_has_it(prepared, tmp_path, monkeypatch, flags, want):
    """A CPU without bf16, simulated by its flags: training falls back to fp32."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    seen = []
    real_step = poetvae.train.train_step

    def step(*args, **kwargs):
        seen.append(kwargs["use_amp"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(poetvae.train, "train_step", step)
    train(tiny(epochs=1, max_steps=2), prepared, tmp_path / "r")
    assert seen and set(seen) == {want}


def test_the_training_header_says_which_precision(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from poetvae.cli import app

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(SKYLAKE))
    flags = ["--embed-dim", "8", "--hidden-dim", "8", "--latent-dim", "2", "--epochs", "1", "--max-steps", "1"]
    result = CliRunner().invoke(
        app, ["train", "--corpus", "small", "-o", str(tmp_path / "r"), *flags, "--w2v-epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "precision: fp32 (the CPU has no native bf16" in result.output


def test_new_runs_default_to_the_fast_path_and_old_configs_keep_theirs():
    cfg = load_config()
    assert cfg.model.output_layer == "adaptive" and cfg.train.amp == "auto"
    # a config.json written before issue 19: no output_layer, amp a bool (true: bf16 on CUDA only)
    old = cfg.to_dict()
    del old["model"]["output_layer"]
    old["train"]["amp"] = True
    loaded = config_from_json(json.dumps(old))
    assert loaded.model.output_layer == "full" and loaded.train.amp == "cuda"
    old["train"]["amp"] = False
    assert config_from_json(json.dumps(old)).train.amp == "off"


def test_a_run_written_before_the_adaptive_softmax_loads_and_decodes_as_it_did(prepared, tmp_path):
    """A run of the full output layer, its config.json rewritten as an older version wrote
    it (no output_layer key, amp a bool): it loads with the full layer, the same weights,
    and writes the same poems as before the rewrite."""
    run = tmp_path / "old"
    train(dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, output_layer="full")), prepared, run)
    before = [s.text for s in Poet.load(run).sample(8, DecodeOptions(seed=3, temperature=0.8))]
    config = json.loads((run / rundir.CONFIG).read_text(encoding="utf-8"))
    del config["model"]["output_layer"]
    config["train"]["amp"] = True
    (run / rundir.CONFIG).write_text(json.dumps(config), encoding="utf-8")
    poet = Poet.load(run)
    assert not poet.model.decoder.adaptive
    after = [s.text for s in poet.sample(8, DecodeOptions(seed=3, temperature=0.8))]
    assert after == before
