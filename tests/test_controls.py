"""The poet's controls: for random weights and random control combinations, every poem is
well formed and meets every constraint it asked for (unless it reports a back-off)."""

import pytest
import torch
from helpers import assert_well_formed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poetvae import prosody
from poetvae.config import ModelConfig
from poetvae.controls import Controls, ControlTables
from poetvae.decode import DecodeOptions, generate
from poetvae.errors import ConfigError, VocabError
from poetvae.model import PoetVAE
from poetvae.prosody import Tone
from poetvae.vocab import Vocab

# characters of several 平 and 仄 rhyme groups and both tones, enough for every pattern
CHARS = (
    "床前春夏秋冬山水风花雪月天地人江河明光霜乡楼流目尽日白云中东西南北来去"
    "空归飞时知思心深林阴门声鸣清生平城情行长阳望上下入海千里更层黄依欲穷"
)
WORDS = ["明月", "春风", "江山", "白日依", "故乡", "千里"]


def make_vocab(words: bool) -> Vocab:
    tokens = list(dict.fromkeys(list(CHARS) + (WORDS if words else [])))
    return Vocab(
        ["<pad>", "<unk>", "<bos>", "<eos>"] + tokens, [0] * 4 + [1] * len(tokens), "jieba" if words else "char"
    )


def tone(ch: str) -> Tone:
    return prosody.tone_class(ch)


def check_tones(lines: list[str]) -> None:
    """二四异, the line endings of the form and 粘对, wherever the tones are definite."""
    definite = {Tone.PING: "平", Tone.ZE: "仄"}
    for line in lines:
        assert prosody.tone_24_ok(line) is not False, lines
    for i, want in ((1, Tone.PING), (2, Tone.ZE), (3, Tone.PING)):
        assert tone(lines[i][-1]) in (want, Tone.BOTH, Tone.UNKNOWN), lines
    # 粘对: the 2nd characters of lines 1..4 go s, ~s, ~s, s
    second = [definite.get(tone(line[1])) for line in lines]
    for a, b, same in ((0, 1, False), (1, 2, True), (2, 3, False), (0, 3, True), (0, 2, False)):
        if second[a] and second[b]:
            assert (second[a] == second[b]) == same, (lines, second)


# (acrostic, prefix) pairs that agree with each other
FIXED = [
    (None, ()),
    ("春夏秋冬", ()),
    ("山水风花", ()),
    ("明月清风", ()),
    (None, ("白日依山尽",)),
    (None, ("白日依山尽", "黄河入海流")),
    (None, ("床前明月光",)),
    ("白黄欲更", ("白日依山尽",)),
]


@st.composite
def controls_strategy(draw):
    acrostic, prefix = draw(st.sampled_from(FIXED))
    return Controls(
        rhyme=draw(st.booleans()),
        rhyme_group=draw(st.sampled_from([None, None, "七阳", "十一尤", "八庚"])),
        tones=draw(st.booleans()),
        acrostic=acrostic,
        prefix=prefix,
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    controls=controls_strategy(),
    words=st.booleans(),
    greedy=st.booleans(),
    beam=st.sampled_from([1, 1, 3]),
    temperature=st.floats(0.2, 3.0),
    rule=st.booleans(),
)
def test_random_models_meet_every_control(seed, controls, words, greedy, beam, temperature, rule):
    torch.manual_seed(seed)
    vocab = make_vocab(words)
    model = PoetVAE(
        ModelConfig(vocab_size=len(vocab), embed_dim=8, highway_layers=1, hidden_dim=8, latent_dim=3, dropout=0.0)
    ).eval()
    z = torch.randn(12, 3)
    ids, logprob, backoff = generate(
        model,
        z,
        vocab,
        DecodeOptions(temperature, greedy=greedy, controls=controls, beam=beam, repetition_rule=rule),
        generator=torch.Generator().manual_seed(seed),
    )
    assert_well_formed(vocab, ids)
    assert torch.isfinite(logprob).all()
    for row, relaxed in zip(ids.tolist(), backoff.tolist()):
        lines = vocab.decode(row)
        if controls.acrostic:
            assert "".join(line[0] for line in lines) == controls.acrostic
        assert tuple(lines[: len(controls.prefix)]) == controls.prefix
        if controls.wants_rhyme and not relaxed[1]:
            ping = None if controls.rhyme_group else Tone.PING
            assert prosody.rhymes(lines[1][-1], lines[3][-1], tone=ping), lines
            if controls.rhyme_group:
                assert controls.rhyme_group in prosody.rhyme_groups(lines[3][-1])
            if tone(lines[0][-1]) is Tone.PING and not controls.prefix:
                assert prosody.rhymes(lines[0][-1], lines[3][-1]), lines
            # each rhyme on a character of its own: no 重韵, with or without the repetition rule
            assert lines[3][-1] != lines[1][-1], lines
            if tone(lines[0][-1]) is Tone.PING:
                assert lines[0][-1] not in (lines[1][-1], lines[3][-1]), lines
        if controls.tones and not relaxed[0] and not controls.prefix:
            check_tones(lines)


def test_backoff_is_reported_not_crashed():
    # a vocabulary with no character of the wanted group: the rhyme cannot be kept
    tokens = list("天地人山水风花雪月")  # none of them is in 十一尤
    vocab = Vocab(["<pad>", "<unk>", "<bos>", "<eos>"] + tokens, [0] * 4 + [1] * len(tokens))
    with pytest.raises(VocabError, match="rhyme group"):
        ControlTables(Controls(rhyme_group="十一尤"), vocab)
    # tones that cannot all hold: only 仄 characters, yet lines 2 and 4 must end 平
    ze_only = [c for c in "月日雪白木石竹入出" if tone(c) is Tone.ZE]
    vocab = Vocab(["<pad>", "<unk>", "<bos>", "<eos>"] + ze_only, [0] * 4 + [1] * len(ze_only))
    model = PoetVAE(ModelConfig(vocab_size=len(vocab), embed_dim=4, hidden_dim=4, latent_dim=2)).eval()
    ids, _, backoff = generate(
        model, torch.randn(3, 2), vocab, DecodeOptions(greedy=True, controls=Controls(tones=True))
    )
    assert_well_formed(vocab, ids)
    assert backoff[:, 0].all() and not backoff[:, 1].any()


def test_bad_controls_are_clear_errors():
    for bad in (
        dict(acrostic="春夏秋"),
        dict(acrostic="abcd"),
        dict(prefix=("白日依山",)),
        dict(prefix=("白日依山尽",) * 4),
        dict(rhyme_group="九十九"),
        dict(scheme="cantonese"),
        dict(acrostic="春夏秋冬", prefix=("白日依山尽",)),
    ):
        with pytest.raises(ConfigError):
            Controls(**bad)
    vocab = make_vocab(False)
    with pytest.raises(VocabError, match="龘"):
        ControlTables(Controls(acrostic="龘夏秋冬"), vocab)


def test_controls_reach_the_cli_and_json_reports_backoff(trained_run):
    import json

    from typer.testing import CliRunner

    from poetvae.cli import app

    vocab = Vocab.load(trained_run / "vocab.json")
    chars = [t for t in vocab.tokens[4:] if len(t) == 1][:4]
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "-m",
            str(trained_run),
            "-n",
            "6",
            "--seed",
            "0",
            "--rhyme",
            "--tones",
            "--acrostic",
            "".join(chars),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert len(records) == 6
    for r in records:
        assert "".join(line[0] for line in r["lines"]) == "".join(chars)
        assert isinstance(r["backoff"], list)
        if "rhyme" not in r["backoff"]:
            assert prosody.rhyme_ok(r["lines"])
    bad = CliRunner().invoke(app, ["sample", "-m", str(trained_run), "--acrostic", "春夏"])
    assert bad.exit_code == 1 and "acrostic" in bad.output


def test_controls_are_checked_only_where_they_can_bite():
    """The decoder skips the control masks at positions where no token is constrained:
    for single characters, rhyme bites at the line ends that rhyme (4 only if 平, 9, 19),
    an acrostic at line starts, tones at the 2nd/4th characters and the fixed line ends."""
    vocab = make_vocab(words=False)

    def active(c: Controls) -> set[int]:
        return set(ControlTables(c, vocab).active_at.nonzero().squeeze(1).tolist())

    assert active(Controls(rhyme=True)) == {4, 9, 19}
    assert active(Controls(acrostic="春夏秋冬")) == {0, 5, 10, 15}
    assert active(Controls(tones=True)) == {1, 3, 6, 8, 9, 11, 13, 14, 16, 18, 19}
    assert active(Controls(prefix=("白日依山尽",))) == {0, 1, 2, 3, 4}
    # a word can reach a rhyme position from earlier starts
    words = ControlTables(Controls(rhyme=True), make_vocab(words=True)).active_at
    assert words[8] and words[17] and not words[0]
