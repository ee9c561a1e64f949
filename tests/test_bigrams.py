"""The bigram correction (poetvae.bigrams): its table, its vectorised log b, and what it does
to decoding: nothing at temperature 1, fewer stock bigrams below it, the model's own scores."""

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from poetvae.bigrams import TABLE_PATH, BigramCorrection, BigramTable, corpus_table
from poetvae.config import ModelConfig
from poetvae.decode import DecodeOptions, generate
from poetvae.evaluate import distinct_n
from poetvae.model import PoetVAE
from poetvae.models import bundled_model
from poetvae.poet import Poet
from poetvae.vocab import Vocab

ROOT = Path(__file__).resolve().parent.parent
LINES = ["白日依山尽", "黄河入海流", "白日照山川", "山中白日长", "日出江花红", "春江水暖鸭"]


def table(min_count: int = 1) -> BigramTable:
    return BigramTable.from_lines(LINES, min_count)


def char_vocab(chars: str) -> Vocab:
    tokens = list(dict.fromkeys(chars))
    return Vocab(["<pad>", "<unk>", "<bos>", "<eos>"] + tokens, [0] * 4 + [1] * len(tokens), "char")


def test_counts_follow_the_lines_with_the_line_start_as_a_context():
    t = table()
    index = {ch: i for i, ch in enumerate(t.chars)}
    assert t.chars[0] == "" and len(t.chars) == 1 + len(set("".join(LINES)))
    assert int(t.total.sum()) == sum(len(line) for line in LINES)  # one bigram per character
    starts = t.col[int(t.crow[0]) : int(t.crow[1])].tolist()
    assert {t.chars[i] for i in starts} == {line[0] for line in LINES}
    assert int(t.total[index["白"]]) == 3 and int(t.distinct[index["白"]]) == 1  # 白日 three times
    assert int(t.unigram[index["日"]]) == 4


def test_pruning_keeps_the_exact_totals_and_the_witten_bell_formula():
    full, pruned = table(1), table(2)
    assert pruned.col.numel() < full.col.numel()
    assert torch.equal(full.total, pruned.total) and torch.equal(full.distinct, pruned.distinct)
    u = full.unigram_probs
    index = {ch: i for i, ch in enumerate(full.chars)}
    # b(日 | 白) = (3 + 1 u(日)) / (3 + 1), in both tables (3 >= 2)
    expected = (3 + float(u[index["日"]])) / 4
    assert full.prob("白", "日") == pytest.approx(expected) == pruned.prob("白", "日")
    # 山尽 is seen once: the pruned table backs off to N1+(山) u(尽) / (n(山) + N1+(山))
    n, d = int(full.total[index["山"]]), int(full.distinct[index["山"]])
    assert full.prob("山", "尽") == pytest.approx((1 + d * float(u[index["尽"]])) / (n + d))
    assert pruned.prob("山", "尽") == pytest.approx(d * float(u[index["尽"]]) / (n + d))
    # over every character, a context's probabilities sum to 1 less the unseen characters' share
    for prev in ["", "白", "山", "鸭"]:
        total = sum(full.prob(prev, ch) for ch in full.chars[1:])
        assert 0.98 < total < 1.0


def test_a_table_survives_safetensors(tmp_path):
    t = table(2)
    t.save(tmp_path / "b.safetensors")
    back = BigramTable.load(tmp_path / "b.safetensors")
    assert back.chars == t.chars
    for name in ("crow", "col", "count", "total", "distinct", "unigram"):
        assert torch.equal(getattr(back, name), getattr(t, name)), name
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temporary left behind


def test_log_b_over_a_character_vocabulary_is_the_formula_at_every_row():
    t = table(2)
    vocab = char_vocab("白日依山尽黄河入海流照川中长出江花红春水暖鸭" + "霜")  # 霜: not in the table
    corr = BigramCorrection(vocab, table=t)
    assert not corr.identity  # 霜 has no class of its own
    prev = torch.tensor([vocab.index[c] for c in "白山鸭霜日"] + [2])  # 2: <bos>
    written = torch.tensor([1, 3, 4, 2, 5, 0])  # row 4 and 5 start a line: the line start context
    logb = corr.log_prob(prev, written)
    assert logb.shape == (6, len(vocab))
    assert (logb[:, :4] == 0).all()  # the specials are the form's to decide
    for r, context in enumerate(["白", "山", "鸭", "霜", "", ""]):
        for token in vocab.tokens[4:]:
            want = math.log(t.prob(context, token))
            assert logb[r, vocab.index[token]].item() == pytest.approx(want, rel=1e-4), (context, token)
    whole = BigramCorrection(char_vocab("白日依山尽黄河入海流"), table=t)
    assert whole.identity


def test_log_b_of_a_word_is_its_first_character_after_the_last_then_the_bigrams_inside():
    t = table(1)
    tokens = ["白日", "依山尽", "山", "日", "黄河", "流"]
    vocab = Vocab(["<pad>", "<unk>", "<bos>", "<eos>"] + tokens, [0] * 4 + [1] * len(tokens), "jieba")
    corr = BigramCorrection(vocab, table=t)
    logb = corr.log_prob(torch.tensor([vocab.index["白日"], vocab.index["黄河"]]), torch.tensor([2, 2]))
    for r, last in enumerate("日河"):
        for token in tokens:
            want = math.log(t.prob(last, token[0])) + sum(math.log(t.prob(a, b)) for a, b in zip(token, token[1:]))
            assert logb[r, vocab.index[token]].item() == pytest.approx(want, rel=1e-4), (last, token)


def test_the_shipped_table_is_what_the_tool_builds_from_the_shipped_corpora(tmp_path):
    out = tmp_path / "bigrams.safetensors"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_bigrams.py"), "-o", str(out)], check=True, cwd=ROOT)
    assert out.read_bytes() == TABLE_PATH.read_bytes()
    shipped = corpus_table()
    # the stock bigrams the correction is for: 不可, 不知 and 不见 are what the corpus writes
    # most after 不, each far likelier there than after the line start
    after = {ch: shipped.prob("不", ch) for ch in shipped.chars[1:]}
    assert sorted(after, key=after.get, reverse=True)[:3] == ["可", "知", "见"]
    assert shipped.prob("不", "知") > 10 * shipped.prob("", "知")


def tiny_model(vocab: Vocab) -> PoetVAE:
    torch.manual_seed(0)
    return PoetVAE(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=16, latent_dim=3, dropout=0.0)).eval()


def test_at_temperature_one_or_greedy_the_correction_changes_nothing():
    vocab = char_vocab("天地人山水风花雪月春秋日夜云江河明光霜乡不知见")
    model, z = tiny_model(vocab), torch.randn(32, 3)
    for options in (DecodeOptions(temperature=1.0, seed=1), DecodeOptions(greedy=True), DecodeOptions(beam=2)):
        on = generate(model, z, vocab, options)
        off = generate(model, z, vocab, DecodeOptions(**{**options.__dict__, "bigram_correction": 0.0}))
        assert on.ids.equal(off.ids) and on.logprob.equal(off.logprob)


def test_below_temperature_one_it_changes_the_draws_and_keeps_the_models_scores():
    vocab = char_vocab("天地人山水风花雪月春秋日夜云江河明光霜乡不知见")
    model, z = tiny_model(vocab), torch.randn(64, 3)
    on = generate(model, z, vocab, DecodeOptions(temperature=0.5, seed=2))
    off = generate(model, z, vocab, DecodeOptions(temperature=0.5, seed=2, bigram_correction=0.0))
    assert not on.ids.equal(off.ids)
    with torch.no_grad():
        rec = model.reconstruction_loss(on.ids, model.decode(z, PoetVAE.teacher_inputs(on.ids))[0])
    assert torch.allclose(-rec, on.logprob, atol=1e-4)  # the poem's score is the model's, not the draw's


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_decode_options_reject_a_correction_outside_0_to_1(value):
    with pytest.raises(ValueError, match="bigram_correction"):
        DecodeOptions(bigram_correction=value)


def test_on_the_bundled_poet_it_writes_fewer_stock_bigrams_at_temperature_0_8():
    poet = Poet.load(bundled_model("classical"), device="cpu")
    decoded = {}
    for k in (0.0, 1.0):
        samples = poet.sample(300, DecodeOptions(temperature=0.8, seed=0, bigram_correction=k))
        decoded[k] = [s.lines for s in samples]
    bigrams = {
        k: Counter(line[i : i + 2] for p in poems for line in p for i in range(4)) for k, poems in decoded.items()
    }
    head = [b for b, _ in bigrams[0.0].most_common(10)]
    assert sum(bigrams[1.0][b] for b in head) < 0.8 * sum(bigrams[0.0][b] for b in head)
    assert distinct_n(decoded[1.0], 2) > distinct_n(decoded[0.0], 2) + 0.03
