"""The repetition rule (poetvae.repetition): learnt from the corpus, it removes the stutter,
the third use of a character, the word loop and the reused rhyme character, never a 叠字
the corpus uses, and every poem stays well formed, whatever the weights."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
import torch
from helpers import assert_well_formed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from poetvae import prosody
from poetvae.config import ModelConfig
from poetvae.controls import BACKOFF_NAMES, Controls
from poetvae.data_files import data_file
from poetvae.decode import DecodeOptions, DecodeTables, generate
from poetvae.form import FORM
from poetvae.model import PoetVAE
from poetvae.repetition import REPEATS, RepeatTables, corpus_table, violations
from poetvae.vocab import Vocab

TABLE = corpus_table()
# characters of several rhyme groups; 处 is a 叠字 of the corpus at the start of a line
# (处处), 中 only at its end (…中中), and no two corpus poems double 雪 anywhere
CHARS = "处纷水山风花雪月天地人江河明光霜乡楼流春秋云中东西来去空归飞时心林门声清生城情行长阳"
WORDS = ["明月", "春风", "江山", "处处", "故乡", "千里"]


def make_vocab(words: bool = False) -> Vocab:
    tokens = list(dict.fromkeys(list(CHARS) + (WORDS if words else [])))
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    return Vocab(specials + tokens, [0] * 4 + [1] * len(tokens), "jieba" if words else "char")


def tiny_model(vocab: Vocab, seed: int = 0) -> PoetVAE:
    torch.manual_seed(seed)
    # the full output layer: one bias per token, for the tests that make a model love one
    sizes = dict(embed_dim=8, highway_layers=1, hidden_dim=8, latent_dim=3, dropout=0.0)
    cfg = ModelConfig(vocab_size=len(vocab), **sizes, output_layer="full")
    return PoetVAE(cfg).eval()


def loving(vocab: Vocab, favourites: dict[str, float], seed: int = 0) -> PoetVAE:
    """A model whose output layer adds a bias to some tokens: it wants to write them everywhere."""
    model = tiny_model(vocab, seed)
    with torch.no_grad():
        for token, bias in favourites.items():
            model.decoder.out.bias[vocab.index[token]] += bias
    return model


def decode(model: PoetVAE, vocab: Vocab, n: int = 8, **options) -> tuple[list[list[str]], torch.Tensor]:
    ids, _, backoff = generate(
        model, torch.randn(n, 3), vocab, DecodeOptions(**options), generator=torch.Generator().manual_seed(0)
    )
    assert_well_formed(vocab, ids)
    return [vocab.decode(row) for row in ids.tolist()], backoff


# ---- the table --------------------------------------------------------------------------
def test_the_table_keeps_every_diezi_the_quatrains_use_twice():
    """Learnt, not listed: every character the shipped quatrains double at one place in a line
    in two poems or more is a 叠字 of the table there (the table counts the stanzas too), so
    the rule lets every such corpus poem through; a one-off like 水水 is not."""
    doubles: Counter[tuple[str, int]] = Counter()
    poems = []
    for name in ("tang_quatrains.jsonl.gz", "song_quatrains.jsonl.gz"):
        with gzip.open(data_file(name), "rt", encoding="utf-8") as f:
            poems += [tuple(json.loads(line)["body"]) for line in f]
    for lines in poems:
        doubles.update({(line[k], k) for line in lines for k in range(4) if line[k] == line[k + 1]})
    common = {d for d, count in doubles.items() if count >= 2}
    assert len(common) > 300
    assert all(ch in TABLE.doubles[k] for ch, k in common)
    assert "处" in TABLE.doubles[0] and "中" in TABLE.doubles[3] and "中" not in TABLE.doubles[0]
    assert not any("雪" in TABLE.doubles[k] for k in range(4))
    # no quatrain is a stutter for the rule when its doubles are common ones
    for lines in poems:
        found = {(line[k], k) for line in lines for k in range(4) if line[k] == line[k + 1]}
        if found <= common:
            assert "stutter" not in {kind for _, kind in violations(lines)}, lines
    assert TABLE.max_uses == 2 and (1, 3) in TABLE.line_end_pairs  # lines 2 and 4: 重韵


def test_violations_name_each_repeat():
    assert violations(("处处闻啼鸟", "夜来风雨声", "花落知多少", "春眠不觉晓")) == []
    assert violations(("江南鸟啼鸟", "暝色落船眠", "树暗春风起", "溪边水水连")) == [(18, "stutter")]
    assert violations(("山中山色好", "花开满山坡", "何人问山水", "一醉到天明")) == [(8, "third use"), (13, "third use")]
    assert violations(("江月照长夜", "清光满画楼", "何人知江月", "独倚玉阑秋")) == [(14, "loop")]
    chongyun = violations(("白日依山尽", "黄河入海流", "欲穷千里目", "更上一层流"))
    assert chongyun == [(19, "line ends")]


# ---- the rule inside the decoder ---------------------------------------------------------
def test_weights_that_love_one_character_cannot_stutter_or_use_it_thrice():
    vocab = make_vocab()
    model = loving(vocab, {"山": 50.0})
    off, _ = decode(model, vocab, repetition_rule=False)
    assert all("".join(lines).count("山") == 20 for lines in off)  # what the rule removes
    on, backoff = decode(model, vocab)
    for lines in on:
        assert "".join(lines).count("山") == 2, lines  # as often as the rule allows, no more
        assert max(Counter("".join(lines)).values()) <= TABLE.max_uses
        assert violations(lines) == [], lines
    assert not backoff.any()


def test_a_corpus_diezi_stays_when_the_weights_push_for_it():
    vocab = make_vocab()
    for ch in "处中":
        model = loving(vocab, {ch: 30.0})
        off, _ = decode(model, vocab, greedy=True, repetition_rule=False)
        assert all(lines[0] == ch * 5 for lines in off)  # what the weights want
        on, backoff = decode(model, vocab, greedy=True)
        assert not backoff.any()
        for lines in on:
            # twice, as a 叠字 where the corpus doubles it: 处处 opens a line, 中中 closes one
            assert "".join(lines).count(ch) == 2, lines
            assert (lines[0][:2] == ch * 2) == (ch == "处"), lines
            assert violations(lines) == []
    # the same, one step at a time: 中 after 中 is allowed at the end of a line only
    tables = RepeatTables(vocab)
    for written, allowed in (("天地人中", True), ("中", False)):
        state = tables.initial_state(1)
        for p, c in enumerate(written):
            tables.update(torch.tensor([vocab.index[c]]), torch.tensor([p]), state)
        forbid = tables.forbidden(torch.tensor([len(written)]), state)
        assert bool(forbid[0, vocab.index["中"]]) != allowed


def test_no_stutter_where_the_corpus_never_doubles():
    vocab = make_vocab()
    model = loving(vocab, {"雪": 50.0, "山": 45.0})
    on, _ = decode(model, vocab)
    for lines in on:
        assert not any("雪雪" in line for line in lines), lines
        assert "".join(lines).count("雪") == 2


def test_the_rhyme_character_is_never_reused():
    """A model that wants to end every line on 霜: line 4 never ends on line 2's character,
    with the rule or with --rhyme alone."""
    vocab = make_vocab()
    model = tiny_model(vocab, 1)
    with torch.no_grad():
        model.decoder.out.bias[vocab.index["霜"]] += 12.0
    off, _ = decode(model, vocab, n=16, greedy=True, repetition_rule=False)
    assert all(lines[1][-1] == lines[3][-1] == "霜" for lines in off)
    for options in ({}, {"repetition_rule": False, "controls": Controls(rhyme=True)}):
        got, backoff = decode(model, vocab, n=16, greedy=True, **options)
        assert not backoff.any()
        for lines in got:
            assert lines[3][-1] != lines[1][-1], lines
            if options:  # and still a rhyme
                assert prosody.rhymes(lines[1][-1], lines[3][-1], tone=prosody.Tone.PING), lines


def test_a_word_loop_is_cut():
    vocab = make_vocab()
    tables = RepeatTables(vocab)
    state = tables.initial_state(1)
    for p, ch in enumerate("江月天长山清光来城楼春风中江"):
        tables.update(torch.tensor([vocab.index[ch]]), torch.tensor([p]), state)
    forbid = tables.forbidden(torch.tensor([14]), state)
    assert "江月" not in TABLE.repeated_bigrams
    assert forbid[0, vocab.index["月"]]  # 江月 ... 江月: a loop
    assert forbid[0, vocab.index["山"]] and forbid[0, vocab.index["楼"]]  # line 3 ends on no earlier end
    assert not forbid[0, vocab.index["花"]]
    assert forbid[0, vocab.index["江"]]  # 江 a third time


def test_the_rule_gives_way_when_nothing_else_is_left():
    """An acrostic that repeats one character 4 times: fixed characters are never relaxed,
    the rule gives way for those steps and says so."""
    vocab = make_vocab()
    poems, backoff = decode(tiny_model(vocab), vocab, controls=Controls(acrostic="春春春春"))
    assert all("".join(line[0] for line in lines) == "春春春春" for lines in poems)
    assert BACKOFF_NAMES[REPEATS] == "repeats" and backoff[:, REPEATS].all()
    assert not backoff[:, :REPEATS].any()
    # a vocabulary too small for the rule: 3 characters, 20 places
    small = Vocab(["<pad>", "<unk>", "<bos>", "<eos>", "山", "水", "云"], [0] * 4 + [1] * 3)
    poems, backoff = decode(tiny_model(small), small)
    assert backoff[:, REPEATS].all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    words=st.booleans(),
    greedy=st.booleans(),
    beam=st.sampled_from([1, 1, 3]),
    temperature=st.floats(0.2, 3.0),
    favourite=st.sampled_from(list(CHARS)),
    bias=st.floats(0.0, 40.0),
    controls=st.sampled_from(
        [None, Controls(rhyme=True), Controls(rhyme=True, tones=True), Controls(acrostic="春风明月")]
    ),
)
def test_random_models_keep_the_rule_and_the_form(seed, words, greedy, beam, temperature, favourite, bias, controls):
    vocab = make_vocab(words)
    model = loving(vocab, {favourite: bias}, seed)
    poems, backoff = decode(model, vocab, n=12, temperature=temperature, greedy=greedy, beam=beam, controls=controls)
    for lines, relaxed in zip(poems, backoff.tolist()):
        if relaxed[REPEATS]:
            continue
        kinds = {kind for _, kind in violations(lines)}
        # a word's inner pairs are not checked for loops
        assert kinds <= ({"loop"} if words else set()), (lines, kinds)
        assert max(Counter("".join(lines)).values()) <= TABLE.max_uses


def test_one_table_per_model_and_no_cost_when_off():
    vocab = make_vocab()
    tables = DecodeTables(tiny_model(vocab), vocab, "cpu")
    assert tables.repeats() is tables.repeats()
    fresh = DecodeTables(tiny_model(vocab), vocab, "cpu")
    generate(tiny_model(vocab), torch.randn(2, 3), vocab, DecodeOptions(repetition_rule=False), tables=fresh)
    assert fresh._repeats is None


def test_the_cli_flag(trained_run):
    from poetvae.cli import app

    runner = CliRunner()
    args = ["sample", "-m", str(trained_run), "-n", "30", "--seed", "0", "--temp", "2", "-f", "json"]
    on = [json.loads(line) for line in runner.invoke(app, args).output.splitlines()]
    off = [json.loads(line) for line in runner.invoke(app, [*args, "--no-repetition-rule"]).output.splitlines()]
    assert len(on) == len(off) == 30 and on != off
    for record in on:
        if "repeats" not in record["backoff"]:
            assert violations(record["lines"]) == []
    assert all(len(r["lines"]) == FORM.lines for r in off)


@pytest.mark.parametrize("command", ["sample", "vary", "interpolate", "reconstruct", "evaluate"])
def test_every_decoding_command_takes_the_flag(command):
    import typer

    from poetvae.cli import app

    [param] = [p for p in typer.main.get_command(app).commands[command].params if p.name == "repetition_rule"]
    assert param.opts == ["--repetition-rule"] and param.secondary_opts == ["--no-repetition-rule"]
    assert param.default is True
