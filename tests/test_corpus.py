"""Tests for poetvae.corpus: formats, normalisation, validation, dedup, splits, files.

The poem type and parse_poem are tested in test_form.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poetvae.corpus import load_poems, read_corpus, split_corpus, write_poems
from poetvae.errors import CorpusError, PoetVAEError
from poetvae.form import Poem

JINGYESI = ("床前明月光", "疑是地上霜", "举头望明月", "低头思故乡")
CHUNXIAO = ("春眠不觉晓", "处处闻啼鸟", "夜来风雨声", "花落知多少")
DENGGAO = ("白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼")
JIANGXUE = ("千山鸟飞绝", "万径人踪灭", "孤舟蓑笠翁", "独钓寒江雪")
ALL = [JINGYESI, CHUNXIAO, DENGGAO, JIANGXUE]


def one(lines: tuple[str, ...]) -> str:
    return f"{lines[0]}，{lines[1]}。{lines[2]}，{lines[3]}。"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def check_counts(report) -> None:
    assert report.read == report.kept + report.duplicates + sum(report.skipped.values())


# -------------------------------------------------------------------- formats


def test_lines_format(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "".join(one(p) + "\n" for p in ALL))
    poems, report = read_corpus([path])
    assert [p.lines for p in poems] == ALL
    assert report.formats == {str(path): "lines"}
    assert report.files == [str(path)]
    assert (report.read, report.kept, report.duplicates) == (4, 4, 0)
    assert not report.skipped and report.converted_t2s == 0


def test_lines_format_separator_variants(tmp_path: Path) -> None:
    a, b, c, d = JINGYESI
    variants = [
        f"{a}, {b}. {c}, {d}.",  # ASCII punctuation
        f"{a}！{b}？{c}；{d}：",  # other full-width marks
        f"{a} {b} {c} {d}",  # spaces only
        f"{a}\u3000{b}\u3000{c}\u3000{d}",  # ideographic space
        f"{a}、{b}；{c}!{d}?",  # mixed
        f"{a}{b}{c}{d}",  # no punctuation at all
        f"  {a}，{b}。 {c}，{d}。  ",  # surrounding whitespace
    ]
    path = write(tmp_path, "v.txt", "\n".join(variants) + "\n")
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "lines"
    assert report.read == len(variants)
    assert [p.lines for p in poems] == [JINGYESI]  # every variant is the same poem
    assert report.duplicates == len(variants) - 1


def test_lines_format_blank_lines_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "\n".join(one(p) + "\n" for p in ALL))  # double-spaced
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "lines"
    assert [p.lines for p in poems] == ALL


def test_stanzas_format(tmp_path: Path) -> None:
    text = (
        "床前明月光，\n疑是地上霜。\n举头望明月，\n低头思故乡。\n\n春眠不觉晓\n处处闻啼鸟\n夜来风雨声\n花落知多少\n\n\n"
    )
    path = write(tmp_path, "s.txt", text)
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "stanzas"
    assert [p.lines for p in poems] == [JINGYESI, CHUNXIAO]
    check_counts(report)


def test_stanzas_couplet_per_line(tmp_path: Path) -> None:
    text = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n"
    path = write(tmp_path, "c.txt", text)
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "stanzas"
    assert [p.lines for p in poems] == [JINGYESI, DENGGAO]


def test_stanzas_single_poem_without_blank_line(tmp_path: Path) -> None:
    path = write(tmp_path, "one.txt", "床前明月光\n疑是地上霜\n举头望明月\n低头思故乡\n")
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "stanzas"
    assert [p.lines for p in poems] == [JINGYESI]


def test_stanzas_verse_lines_without_blank_lines_grouped_by_four(tmp_path: Path) -> None:
    text = "".join(f"{line}，\n" for poem in (JINGYESI, CHUNXIAO) for line in poem)
    path = write(tmp_path, "g.txt", text)
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "stanzas"
    assert [p.lines for p in poems] == [JINGYESI, CHUNXIAO]


def test_stanzas_bad_block_counted(tmp_path: Path) -> None:
    text = "床前明月光\n疑是地上霜\n举头望明月\n\n春眠不觉晓\n处处闻啼鸟\n夜来风雨声\n花落知多少\n"
    path = write(tmp_path, "s.txt", text)
    poems, report = read_corpus([path])
    assert [p.lines for p in poems] == [CHUNXIAO]
    assert report.skipped == {"wrong number of lines": 1}
    assert "s.txt:1" in report.examples["wrong number of lines"][0]
    assert "got 3 lines" in report.examples["wrong number of lines"][0]


def test_jsonl_format(tmp_path: Path) -> None:
    rows = [
        {"title": "静夜思", "author": "李白", "body": list(JINGYESI)},
        {"title": "春晓", "author": "孟浩然", "body": one(CHUNXIAO)},
        {"body": ["白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"]},  # couplets
    ]
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n"
    path = write(tmp_path, "p.jsonl", text)
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "jsonl"
    assert poems[0] == Poem(JINGYESI, "静夜思", "李白")
    assert poems[1] == Poem(CHUNXIAO, "春晓", "孟浩然")
    assert poems[2] == Poem(DENGGAO)


def test_format_detected_from_content_not_extension(tmp_path: Path) -> None:
    row = json.dumps({"body": list(JINGYESI), "title": "静夜思"}, ensure_ascii=False)
    path = write(tmp_path, "looks_plain.txt", row + "\n")
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "jsonl"
    assert poems[0].title == "静夜思"
    path2 = write(tmp_path, "looks_json.json", one(JINGYESI) + "\n")
    _, report2 = read_corpus([path2])
    assert report2.formats[str(path2)] == "lines"


TRAD = ["牀前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]


def chinese_poetry(tmp_path: Path, extra: list[dict] | None = None) -> Path:
    data = [
        {"author": "李白", "title": "靜夜思", "paragraphs": TRAD, "id": "x"},
        {"author": "孟浩然", "title": "春曉", "paragraphs": [" 春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。 "]},
    ] + (extra or [])
    return write(tmp_path, "poet.tang.0.json", json.dumps(data, ensure_ascii=False, indent=2))


def test_chinese_poetry_format_converts_to_simplified(tmp_path: Path) -> None:
    path = chinese_poetry(tmp_path)
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "chinese-poetry"
    assert poems[0].lines[2:] == ("举头望明月", "低头思故乡")
    assert poems[0].title == "静夜思" and poems[0].author == "李白"
    assert poems[1] == Poem(CHUNXIAO, "春晓", "孟浩然")
    assert report.converted_t2s == 2


def test_chinese_poetry_t2s_never(tmp_path: Path) -> None:
    poems, report = read_corpus([chinese_poetry(tmp_path)], t2s="never")
    assert poems[0].lines[2:] == ("舉頭望明月", "低頭思故鄉")
    assert poems[0].title == "靜夜思"
    assert report.converted_t2s == 0


def test_t2s_always_and_auto_on_plain_text(tmp_path: Path) -> None:
    path = write(tmp_path, "trad.txt", "".join(TRAD) + "\n")
    poems, report = read_corpus([path])  # auto: plain text is taken as it is
    assert poems[0].lines[3] == "低頭思故鄉" and report.converted_t2s == 0
    poems, report = read_corpus([path], t2s="always")
    assert poems[0].lines[3] == "低头思故乡" and report.converted_t2s == 1
    with pytest.raises(CorpusError, match="t2s"):
        read_corpus([path], t2s="sometimes")


def test_chinese_poetry_rejects_notes_and_lost_glyphs(tmp_path: Path) -> None:
    extra = [
        {
            "author": "a",
            "title": "t",
            "paragraphs": ["白日依山盡，黃河入海流（一作「去」）。", "欲窮千里目，更上一層樓。"],
        },
        {"author": "a", "title": "t", "paragraphs": ["千山鳥飛□，萬徑人蹤滅。", "孤舟蓑笠翁，獨釣寒江雪。"]},
    ]
    poems, report = read_corpus([chinese_poetry(tmp_path, extra)])
    assert len(poems) == 2
    assert report.skipped == {"non-Han character": 2}
    examples = report.examples["non-Han character"]
    assert "'（'" in examples[0] and "poet.tang.0.json#2" in examples[0]
    assert "'□'" in examples[1]
    check_counts(report)


# -------------------------------------------------------------- normalisation


def test_crlf_cr_and_bom(tmp_path: Path) -> None:
    crlf = write(tmp_path, "crlf.txt", "\ufeff" + "\r\n".join(one(p) for p in ALL) + "\r\n")
    cr = write(tmp_path, "cr.txt", "\r".join(one(p) for p in ALL))
    stanza = write(tmp_path, "st.txt", "\ufeff床前明月光，\r\n疑是地上霜。\r\n举头望明月，\r\n低头思故乡。\r\n")
    for path in (crlf, cr):
        poems, report = read_corpus([path])
        assert [p.lines for p in poems] == ALL
        assert not report.skipped
    poems, report = read_corpus([stanza])
    assert [p.lines for p in poems] == [JINGYESI]


def test_bom_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "b.jsonl", "\ufeff" + json.dumps({"body": list(CHUNXIAO)}) + "\r\n")
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "jsonl"
    assert poems[0].lines == CHUNXIAO


def test_nfc_normalisation(tmp_path: Path) -> None:
    # U+F907 is a compatibility ideograph that NFC maps to U+9F9C 龜.
    path = write(tmp_path, "n.txt", "\uf907眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n")
    poems, _ = read_corpus([path])
    assert poems[0].lines[0] == "\u9f9c眠不觉晓"


def test_supplementary_plane_characters(tmp_path: Path) -> None:
    path = write(tmp_path, "x.txt", "红炉𬬻火新，疑是地上霜。举头望明月，低头思故乡。\n")
    poems, report = read_corpus([path])
    assert poems[0].lines[0] == "红炉𬬻火新"
    assert not report.skipped


# ------------------------------------------------------------- invalid poems


def test_invalid_poems_counted_with_examples(tmp_path: Path) -> None:
    lines = [
        one(JINGYESI),
        "春眠不觉晓，处处闻啼鸟。夜来风雨声。",  # 3 lines
        "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。欲穷千里目，更上一层楼。",  # 6
        "千山鸟飞绝，万径人踪灭。孤舟蓑笠，独钓寒江雪。",  # a line of 4
        "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁翁，独钓寒江雪。",  # a line of 6
        "千山鸟飞绝，万径人踪灭（一作「没」）。孤舟蓑笠翁，独钓寒江雪。",  # inline note
        "千山鸟飞1，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",  # digit
        "A山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",  # letter
        "千山鸟飞\ue000，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",  # private use
    ]
    path = write(tmp_path, "bad.txt", "\n".join(lines) + "\n")
    poems, report = read_corpus([path])
    assert report.formats[str(path)] == "lines"
    assert [p.lines for p in poems] == [JINGYESI]
    assert report.skipped == {
        "wrong number of lines": 2,
        "line not 5 characters": 2,
        "non-Han character": 4,
    }
    check_counts(report)
    wrong = report.examples["wrong number of lines"]
    assert "bad.txt:2" in wrong[0] and "got 3 lines" in wrong[0]
    assert "got 6 lines" in wrong[1]
    length = report.examples["line not 5 characters"]
    assert "line 3 '孤舟蓑笠' has 4 characters" in length[0]
    assert "has 6 characters" in length[1]
    nonhan = report.examples["non-Han character"]
    assert len(nonhan) == 3  # at most 3 examples per reason
    assert "'（'" in nonhan[0] and "'1'" in nonhan[1] and "'A'" in nonhan[2]
    assert all(len(e) < 120 for e in nonhan)  # raw text is truncated


def test_empty_poem_reason(tmp_path: Path) -> None:
    rows = [{"body": ""}, {"body": []}, {"body": "，。"}, {"body": list(JINGYESI)}]
    path = write(tmp_path, "e.jsonl", "\n".join(json.dumps(r) for r in rows))
    poems, report = read_corpus([path])
    assert len(poems) == 1
    assert report.skipped == {"empty": 3}
    check_counts(report)


def test_no_valid_poem_raises_with_reasons(tmp_path: Path) -> None:
    text = (
        "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。春眠不觉晓\n"
        "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。处处闻啼鸟\n"
        "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多\n"
    )
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(CorpusError) as exc:
        read_corpus([path])
    msg = str(exc.value)
    assert msg.startswith("no valid 五言绝句 in ") and "bad.txt" in msg
    assert "wrong number of lines 2, line not 5 characters 1" in msg
    assert "\n" not in msg


def test_empty_file_raises(tmp_path: Path) -> None:
    for name, text in (("empty.txt", ""), ("blank.txt", "\n \n\u3000\n"), ("bom.txt", "\ufeff")):
        path = write(tmp_path, name, text)
        with pytest.raises(CorpusError, match="no valid 五言绝句.*empty"):
            read_corpus([path])


def test_empty_or_invalid_file_among_good_ones_is_fine(tmp_path: Path) -> None:
    good = write(tmp_path, "good.txt", one(JINGYESI) + "\n")
    empty = write(tmp_path, "empty.txt", "")
    bad = write(tmp_path, "bad.txt", "春眠不觉晓\n")
    poems, report = read_corpus([empty, bad, good])
    assert [p.lines for p in poems] == [JINGYESI]
    assert report.formats[str(empty)] == "empty"
    assert report.skipped == {"wrong number of lines": 1}


# --------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file: .*nope.txt"):
        read_corpus([tmp_path / "nope.txt"])


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="is a directory"):
        read_corpus([tmp_path])


def test_no_paths() -> None:
    with pytest.raises(CorpusError, match="no corpus files"):
        read_corpus([])


def test_not_utf8(tmp_path: Path) -> None:
    data = one(JINGYESI).encode("utf-8") + b"\n" + one(CHUNXIAO).encode("gbk")
    offset = len(one(JINGYESI).encode("utf-8")) + 1
    path = write(tmp_path, "gbk.txt", data)
    with pytest.raises(CorpusError) as exc:
        read_corpus([path])
    msg = str(exc.value)
    assert "gbk.txt is not UTF-8 text" in msg
    assert f"byte 0x{data[offset]:02x} at offset {offset}" in msg
    assert isinstance(exc.value, PoetVAEError)


def test_bad_jsonl_line(tmp_path: Path) -> None:
    good = json.dumps({"body": list(JINGYESI)})
    path = write(tmp_path, "b.jsonl", f'{good}\n{good}\n{{"body": [\n')
    with pytest.raises(CorpusError, match=r"b\.jsonl line 3: invalid JSON"):
        read_corpus([path])


def test_jsonl_without_body(tmp_path: Path) -> None:
    path = write(tmp_path, "b.jsonl", json.dumps({"body": list(JINGYESI)}) + '\n{"text": "x"}\n')
    with pytest.raises(CorpusError, match=r"line 2: .*'body'"):
        read_corpus([path])
    path = write(tmp_path, "c.jsonl", '{"body": [1, 2, 3, 4]}\n')
    with pytest.raises(CorpusError, match="line 1"):
        read_corpus([path])


def test_bad_chinese_poetry_json(tmp_path: Path) -> None:
    path = write(tmp_path, "p.json", '[\n  {"paragraphs": ["床前明月光，"]},\n  {"paragraphs": }\n]')
    with pytest.raises(CorpusError, match=r"p\.json line 3 column \d+: invalid JSON"):
        read_corpus([path])
    path = write(tmp_path, "q.json", '[{"title": "x"}]')
    with pytest.raises(CorpusError, match="entry 0.*paragraphs"):
        read_corpus([path])


# ------------------------------------------------------------------- dedup


def test_duplicates_dropped_across_files_first_kept(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.jsonl",
        "\n".join(
            json.dumps({"title": t, "body": list(p)}, ensure_ascii=False)
            for t, p in (("first", JINGYESI), ("second", JINGYESI), ("x", CHUNXIAO))
        ),
    )
    b = write(tmp_path, "b.txt", f"{one(CHUNXIAO)}\n{one(DENGGAO)}\n")
    poems, report = read_corpus([a, b])
    assert [p.lines for p in poems] == [JINGYESI, CHUNXIAO, DENGGAO]
    assert poems[0].title == "first"
    assert report.duplicates == 2 and report.read == 5 and report.kept == 3
    check_counts(report)


def test_duplicates_on_simplified_body(tmp_path: Path) -> None:
    trad = chinese_poetry(tmp_path)
    simp = write(tmp_path, "s.txt", one(JINGYESI) + "\n")
    poems, report = read_corpus([simp, trad])
    assert len(poems) == 2 and report.duplicates == 1


# ------------------------------------------------------------------ splits


def many(n: int) -> list[Poem]:
    # Distinct poems: vary the first character of line 1.
    return [Poem((chr(0x4E00 + i) + "前明月光", *JINGYESI[1:])) for i in range(n)]


def test_split_deterministic_disjoint_complete() -> None:
    poems = many(200)
    s1 = split_corpus(poems, 0.1, 0.05, seed=7)
    s2 = split_corpus(poems, 0.1, 0.05, seed=7)
    s3 = split_corpus(poems, 0.1, 0.05, seed=8)
    assert s1 == s2
    assert s1 != s3
    assert set(s1) == {"train", "valid", "test"}
    assert (len(s1["train"]), len(s1["valid"]), len(s1["test"])) == (170, 20, 10)
    parts = [set(s1[k]) for k in ("train", "valid", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    assert set().union(*parts) == set(poems)
    assert [p.text for p in poems] == [p.text for p in many(200)]  # input untouched


def test_split_tiny_corpus_each_split_nonempty() -> None:
    for n in (3, 4, 5, 10):
        s = split_corpus(many(n), 0.1, 0.1, seed=0)
        assert all(len(v) >= 1 for v in s.values())
        assert sum(len(v) for v in s.values()) == n


def test_split_zero_fractions() -> None:
    s = split_corpus(many(10), 0.0, 0.0, seed=1)
    assert len(s["train"]) == 10 and s["valid"] == [] and s["test"] == []
    s = split_corpus(many(2), 0.5, 0.0, seed=1)
    assert len(s["train"]) == 1 and len(s["valid"]) == 1 and s["test"] == []


def test_split_errors() -> None:
    with pytest.raises(CorpusError, match="too small"):
        split_corpus(many(2), 0.1, 0.1, seed=0)
    with pytest.raises(CorpusError, match="too small"):
        split_corpus([], 0.0, 0.0, seed=0)
    with pytest.raises(CorpusError, match="fraction"):
        split_corpus(many(10), 0.6, 0.5, seed=0)
    with pytest.raises(CorpusError, match="fraction"):
        split_corpus(many(10), -0.1, 0.1, seed=0)


# -------------------------------------------------------------- poem files


def test_write_load_roundtrip(tmp_path: Path) -> None:
    poems = [Poem(p, "t", "a") for p in ALL] + [Poem(JINGYESI), Poem(("红炉𬬻火新", *DENGGAO[1:]))]
    path = tmp_path / "sub" / "train.txt"
    write_poems(path, poems)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    assert text.endswith("\n") and "\r" not in text
    loaded = load_poems(path)
    assert [p.lines for p in loaded] == [p.lines for p in poems]  # duplicates kept
    assert sorted(x.name for x in path.parent.iterdir()) == ["train.txt"]  # no temp left
    # read_corpus reads the same file as the lines format
    again, report = read_corpus([path])
    assert report.formats[str(path)] == "lines" and report.duplicates == 1


def test_write_poems_replaces_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    write_poems(path, [Poem(JINGYESI)])
    write_poems(path, [])
    assert path.read_text(encoding="utf-8") == ""
    assert load_poems(path) == []


def test_load_poems_rejects_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", one(JINGYESI) + "\n春眠不觉晓\n")
    with pytest.raises(CorpusError, match=r"p\.txt line 2: expected 4 lines"):
        load_poems(path)
    with pytest.raises(CorpusError, match="no such file"):
        load_poems(tmp_path / "missing.txt")
