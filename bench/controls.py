"""What each decoding control costs and delivers on a trained run.

    python bench/controls.py runs/ts [--n 1000] [--temp 0.8] [--repeats 3] [--json out.json]

For each setting it draws n poems from the prior (same seed), times the decoding (the
fastest of --repeats runs, after one warm-up), and measures them with
poetvae.evaluate.sample_stats against the run's training split; it prints a table and 5
examples per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from poetvae.controls import Controls
from poetvae.corpus import load_poems
from poetvae.decode import DecodeOptions
from poetvae.evaluate import sample_stats
from poetvae.poet import Poet

# each setting: the DecodeOptions fields it changes
SETTINGS: dict[str, dict] = {
    "none": {},
    "rhyme": {"controls": Controls(rhyme=True)},
    "rhyme+tones": {"controls": Controls(rhyme=True, tones=True)},
    "rhyme-group 七阳": {"controls": Controls(rhyme_group="七阳")},
    "acrostic 春夏秋冬": {"controls": Controls(acrostic="春夏秋冬")},
    "acrostic+rhyme+tones": {"controls": Controls(acrostic="春夏秋冬", rhyme=True, tones=True)},
    "first line 白日依山尽": {"controls": Controls(prefix=("白日依山尽",))},
    "first line + infer-z": {"controls": Controls(prefix=("白日依山尽",)), "infer_z": True},
    "xinyun rhyme+tones": {"controls": Controls(rhyme=True, tones=True, scheme="xinyun")},
    "beam 4": {"beam": 4},
    "rerank 4 (+prosody 5)": {"rerank": 4, "prosody_weight": 5.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the fastest counts")
    args = ap.parse_args()
    poet = Poet.load(args.run)
    train = [p.lines for p in load_poems(args.run / "prep" / "train.txt")]
    rows = {}
    base = DecodeOptions(temperature=args.temp, seed=args.seed)
    poet.sample(64, base)  # warm-up: tables, allocator, threads
    for name, changes in SETTINGS.items():
        options = dataclasses.replace(base, **changes)
        seconds = []
        for _ in range(args.repeats):  # a shared machine is noisy: the fastest of a few runs
            start = time.perf_counter()
            samples = poet.sample(args.n, options)
            seconds.append(time.perf_counter() - start)
        seconds = min(seconds)
        scheme = options.controls.scheme if options.controls else "pingshui"
        stats = sample_stats([s.lines for s in samples], train, scheme).to_dict()
        stats.update(
            poems_per_s=args.n / seconds,
            backoffs=sum(bool(s.backoff) for s in samples),
            examples=[s.oneline() for s in samples[:5]],
        )
        rows[name] = stats
        print(
            f"{name:24s} {stats['poems_per_s']:8.0f}/s  distinct {stats['distinct']:5d}  "
            f"rhyme {stats['rhyme_rate']:.1%}  二四异 {stats['tone_rate']:.1%}  "
            f"copied {stats['copied_poems']:.1%}/{stats['copied_lines']:.1%}  backoffs {stats['backoffs']}",
            flush=True,
        )
        for e in stats["examples"]:
            print("    " + e)
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
