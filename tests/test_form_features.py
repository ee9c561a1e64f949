"""The decoder's form features (ModelConfig.form_features): facts about the prefix only,
the same in teacher forcing and in generation, and off by default."""

import json

import pytest
import torch
from typer.testing import CliRunner

from poetvae.cli import app
from poetvae.config import ModelConfig, load_config
from poetvae.decode import DecodeOptions, generate
from poetvae.errors import ConfigError
from poetvae.form import FORM
from poetvae.model import TONE_CLASSES, PoetVAE, form_tables
from poetvae.prosody import group_names
from poetvae.step_decoder import StepDecoder
from poetvae.vocab import BOS, EOS, PAD, SPECIALS, Vocab

# 光 霜 乡 share 七阳, 看 is in 寒 (平) and 翰 (仄), 月 is 仄, 天 is 平
HAN = "天地人山水风花雪月春秋日夜云江河明光霜乡看"
VOCAB = Vocab(list(SPECIALS) + list(HAN), [0] * len(SPECIALS) + [1] * len(HAN), "char")
PING, ZE, BOTH = (TONE_CLASSES.index(t) for t in ("PING", "ZE", "BOTH"))
RHYME_GROUPS = group_names("pingshui")  # group k has index k + 1


def model(layers: int = 1) -> PoetVAE:
    cfg = ModelConfig(
        vocab_size=len(VOCAB), embed_dim=8, hidden_dim=6, latent_dim=3, decoder_layers=layers, form_features=True
    )
    m = PoetVAE(cfg)
    m.use_vocab(VOCAB)
    return m.eval()


def poems(b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b, 21) rows of 20 random characters and <eos>."""
    x = torch.randint(len(SPECIALS), len(VOCAB), (b, FORM.seq_len), generator=generator)
    x[:, -1] = EOS
    return x


def test_tables_from_the_vocabulary():
    tone, rhyme = form_tables(VOCAB.tokens)
    ids = {t: VOCAB.index[t] for t in HAN}
    assert tone[ids["天"]] == PING and tone[ids["月"]] == ZE and tone[ids["看"]] == BOTH
    assert tone[BOS] == tone[EOS] == tone[PAD] == 0
    assert rhyme[ids["光"]] == rhyme[ids["霜"]] == rhyme[ids["乡"]] == RHYME_GROUPS.index("七阳") + 1
    assert rhyme[ids["看"]] == RHYME_GROUPS.index("十四寒") + 1  # the 平 group, listed first
    assert rhyme[ids["天"]] != rhyme[ids["光"]] and rhyme[: len(SPECIALS)].eq(0).all()


def test_features_of_a_known_poem():
    m = model()
    tokens = torch.tensor([VOCAB.encode(["天地人山水", "风花雪月光", "春秋日夜云", "江河明看霜"])])
    inputs = PoetVAE.teacher_inputs(tokens)
    positions = torch.arange(FORM.seq_len)[None].clamp(max=FORM.chars)
    line_tone, rhyme = m.form_features(inputs, positions)
    tone = m.token_tone[tokens[0]]
    # step t writes character t; one line up is character t - 5
    assert line_tone[0, :5].eq(0).all() and line_tone[0, 5:20].equal(tone[:15])
    assert line_tone[0, 20] == tone[15]  # <eos> comes after line 4: the character above is 15
    assert rhyme[0, :10].eq(0).all() and rhyme[0, 10:].eq(RHYME_GROUPS.index("七阳") + 1).all()


def test_a_later_character_never_changes_an_earlier_step():
    m = model()
    g = torch.Generator().manual_seed(0)
    tokens = poems(8, g)
    inputs = PoetVAE.teacher_inputs(tokens)
    positions = m.token_chars[inputs].cumsum(dim=1)
    z = torch.randn(8, 3, generator=g)
    features = m.form_features(inputs, positions)
    logits, _ = m.decode(z, inputs)
    seen_later_change = False
    for k in range(FORM.chars):  # change character k, read at step k + 1
        changed = inputs.clone()
        changed[:, k + 1] = len(SPECIALS) + (changed[:, k + 1] - len(SPECIALS) + 1) % len(HAN)
        new_features = m.form_features(changed, positions)
        new_logits, _ = m.decode(z, changed)
        for old, new in zip(features, new_features):
            assert old[:, : k + 1].equal(new[:, : k + 1])
            seen_later_change |= not old[:, k + 1 :].equal(new[:, k + 1 :])
        assert torch.equal(logits[:, : k + 1], new_logits[:, : k + 1])
        assert not torch.allclose(logits[:, k + 1], new_logits[:, k + 1])
    assert seen_later_change  # the features do depend on the prefix


@pytest.mark.parametrize("layers", [1, 2])
def test_step_decoder_equals_the_model_decoder(layers):
    torch.manual_seed(0)
    m = model(layers)
    z = torch.randn(4, 3)
    inputs = PoetVAE.teacher_inputs(poems(4))
    positions = m.token_chars[inputs].cumsum(dim=1)
    line_tone, rhyme = m.form_features(inputs, positions)
    want, _ = m.decode(z, inputs)
    step = StepDecoder(m)
    state, z_gates = m.decoder.initial_state(z), step.z_gates(z)
    for t in range(inputs.size(1)):
        rhymed = z_gates + step.rhyme_gates[rhyme[:, t]]
        hidden, state = step(inputs[:, t], positions[:, t], rhymed, state, line_tone[:, t])
        assert torch.allclose(step.logits(hidden), want[:, t], atol=1e-5)


@pytest.mark.parametrize("options", [DecodeOptions(), DecodeOptions(greedy=True), DecodeOptions(beam=4)])
def test_generation_scores_its_poems_as_teacher_forcing_does(options):
    """generate keeps the features row by row (and through a beam search's reordering);
    its log p(poem | z) equals the teacher-forced one only if they match at every step."""
    m = model(2)
    with torch.no_grad():  # larger weights: the history sways the choices and beams cross
        for p in [*m.decoder.parameters(), m.prev_tone.weight, m.line_tone.weight, m.rhyme.weight]:
            p.mul_(3)
    z = torch.randn(16, 3)
    ids, logprob, _ = generate(m, z, VOCAB, options, generator=torch.Generator().manual_seed(1))
    assert all(len(line) == 5 for row in ids.tolist() for line in VOCAB.decode(row))
    logits, _ = m.decode(z, PoetVAE.teacher_inputs(ids))
    assert torch.allclose(logprob, -PoetVAE.reconstruction_loss(ids, logits), atol=1e-4)


def test_off_by_default_and_only_for_characters():
    assert not ModelConfig().form_features
    plain = PoetVAE(ModelConfig(vocab_size=len(VOCAB)))
    assert not any("tone" in k or "rhyme" in k for k in plain.state_dict())
    with pytest.raises(ConfigError, match="char"):
        load_config(None, {"form_features": True, "tokenizer": "jieba"})
    words = Vocab(list(SPECIALS) + ["明月"], [0] * len(SPECIALS) + [1], "jieba")
    with pytest.raises(ConfigError, match="char"):
        PoetVAE(ModelConfig(vocab_size=len(words), form_features=True)).use_vocab(words)


def test_a_tiny_run_with_form_features_trains_samples_and_evaluates(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    tiny = "--embed-dim 16 --hidden-dim 24 --latent-dim 6 --highway-layers 1 --batch-size 16 --epochs 1"
    tiny += " --w2v-epochs 1 --min-count 1 --form-features"
    result = runner.invoke(app, ["train", "--corpus", "small", "-o", str(run_dir), *tiny.split()])
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["form_features"] is True
    for extra in ([], ["--beam", "3"], ["--rhyme", "--tones"]):
        out = runner.invoke(app, ["sample", "-m", str(run_dir), "-n", "20", "--seed", "0", "-f", "json", *extra])
        assert out.exit_code == 0, out.output
        samples = [json.loads(line) for line in out.output.splitlines()]
        assert len(samples) == 20 and all(len(s["lines"]) == 4 for s in samples)
        assert all(len(line) == 5 for s in samples for line in s["lines"])
    report = runner.invoke(app, ["evaluate", "-m", str(run_dir), "--samples", "5", "--iw", "2", "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["samples"]["poems"] == 5
