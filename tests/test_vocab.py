import pytest

from poetvae.corpus import read_corpus
from poetvae.errors import CheckpointError
from poetvae.form import FORM
from poetvae.vocab import EOS, PAD, UNK, Vocab

POEMS = [
    ("床前明月光", "疑是地上霜", "举头望明月", "低头思故乡"),
    ("白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"),
]


def test_char_vocab_counts_and_order():
    v = Vocab.build(POEMS)
    assert v.tokens[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert v.counts[v.index["明"]] == 2 and v.counts[v.index["头"]] == 2
    assert v.counts[4] == max(v.counts)  # most frequent first


def test_encode_decode_round_trip():
    v = Vocab.build(POEMS)
    rows = v.encode_batch(POEMS)
    assert rows.shape == (2, FORM.seq_len)
    assert rows[:, 20].tolist() == [EOS, EOS]
    assert [v.decode(r) for r in rows.tolist()] == [list(p) for p in POEMS]


def test_min_count_maps_rare_to_unk():
    v = Vocab.build(POEMS, min_count=2)
    ids = v.encode(POEMS[0])
    assert ids[v.tokenize_line("床前明月光").index("明")] != UNK
    assert ids[0] == UNK  # 床 occurs once
    assert v.unknown(POEMS[0])[:2] == ["床", "前"]
    assert v.decode(ids)[0] == "□□明月□"  # 明 and 月 occur twice


def test_json_round_trip(tmp_path):
    v = Vocab.build(POEMS, min_count=1)
    (tmp_path / "vocab.json").write_text(v.to_json(), encoding="utf-8")
    assert "床" in (tmp_path / "vocab.json").read_text(encoding="utf-8")  # readable, not \\u escapes
    w = Vocab.load(tmp_path / "vocab.json")
    assert (w.tokens, w.counts, w.tokenizer, w.min_count) == (v.tokens, v.counts, v.tokenizer, v.min_count)


def test_broken_vocab_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "vocab.json").write_text('{"tokens": []', encoding="utf-8")
    with pytest.raises(CheckpointError):
        Vocab.load(tmp_path / "vocab.json")


def test_jieba_words_never_straddle_lines_and_lines_keep_five_chars(shipped_corpus):
    poems, _ = read_corpus([shipped_corpus])
    lines = [p.lines for p in poems]
    v = Vocab.build(lines, tokenizer="jieba", min_count=1)
    chars = v.token_chars()
    assert any(len(t) > 1 for t in v.tokens[4:]), "jieba found no multi-character words"
    for p in lines:
        for line in p:
            assert "".join(v.tokenize_line(line)) == line
        row = v.encode(p)
        assert sum(chars[i].item() for i in row) == 20
        assert v.decode(row) == list(p)
    rows = v.encode_batch(lines)
    assert (rows == PAD).any(), "word tokens should leave padding at the end of some rows"
