"""Charts of a run: training curves from its log, and a 2-D PCA view of the latent space.

Everything here draws with matplotlib's object-oriented API on the non-interactive Agg
canvas (no pyplot, no global figure state, no display needed) and writes PNGs atomically:
the image is rendered into memory and renamed into place, so a chart on disk is never
half-written.

Chinese labels need a font with CJK glyphs. One is looked up among the installed fonts;
when none covers a label, the label is shown in pinyin instead (七阳 -> qī yáng), so the
chart still reads and matplotlib never warns about missing glyphs.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from poetvae.errors import CheckpointError, PoetVAEError
from poetvae.files import atomic_write
from poetvae.records import EpochRecord, LogRecord, StepRecord, read_log
from poetvae.rundir import LOG, RunDir

__all__ = ["PlotError", "plot_training", "plot_latent", "plot_latent_of_run", "pca2", "TRAINING_PNG"]

TRAINING_PNG = "training.png"
DPI = 120
FIGSIZE = (10.0, 7.0)
MAX_LABELS = 10  # label groups shown in colour in plot_latent; the rest are grey "other"

_TRAIN_COLOR = "tab:blue"
_VALID_COLOR = "tab:orange"
_OTHER_COLOR = "0.72"

# Font family names likely to carry CJK glyphs, tried before the rest of the installed fonts.
_CJK_HINTS = (
    "noto sans cjk",
    "noto serif cjk",
    "noto sans sc",
    "noto sans tc",
    "source han",
    "wenquanyi",
    "wqy",
    "droid sans fallback",
    "ar pl",
    "simhei",
    "simsun",
    "microsoft yahei",
    "pingfang",
    "heiti",
    "songti",
    "hiragino",
    "sarasa",
    "arial unicode",
    "unifont",
    "cjk",
)


class PlotError(PoetVAEError):
    """Data that cannot be charted (too few points, mismatched labels, non-finite values)."""


# ---- shared helpers -------------------------------------------------------------------------
def _new_figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("charts need matplotlib: pip install matplotlib") from None

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> Path:
    """Render `fig` to PNG bytes in memory, then write them atomically to `path`."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Glyphs the chosen fonts lack were already replaced by pinyin; never spam about them.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support", category=UserWarning)
        fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    path = Path(path)
    try:
        atomic_write(path, buf.getvalue())
    except OSError as e:
        raise PlotError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _num(value: Any) -> float | None:
    """A finite float, or None for a missing / non-numeric / NaN / infinite field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---- training curves ------------------------------------------------------------------------
def _by_step(records: Iterable[LogRecord], kind: type[LogRecord]) -> list[Any]:
    """Records of one kind, one per step (a resumed run re-logs steps: the later record wins),
    sorted by step."""
    out: dict[float, LogRecord] = {}
    for r in records:
        if isinstance(r, kind):
            step = _num(r.step)
            if step is not None:
                out[step] = r
    return [out[s] for s in sorted(out)]


Metric = Callable[[Any], Any]  # a record -> its value of one metric (None when absent)


def _series(records: Sequence[LogRecord], metric: Metric) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        y = _num(metric(r))
        if y is not None:
            xs.append(float(r.step))
            ys.append(y)
    return xs, ys


def _valid(name: str) -> Metric:
    """The metric `name` of an epoch record's validation terms."""
    return lambda r: getattr(r.valid, name) if r.valid is not None else None


def _train_nelbo(r: StepRecord) -> float | None:
    """Training negative ELBO of a step record: rec + KL at beta = 1."""
    return r.rec + r.kl if _num(r.rec) is not None and _num(r.kl) is not None else None


def _no_data(ax, text: str, y: float = 0.5) -> None:
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", color="0.45")


def _style(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.35)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="best", fontsize="small")


def _train_vs_valid(
    ax,
    steps: list,
    epochs: list,
    train_metric: Metric,
    valid_metric: Metric,
    title: str,
    ylabel: str,
    train_label: str = "train (per logged step)",
) -> None:
    tx, ty = _series(steps, train_metric)
    vx, vy = _series(epochs, valid_metric)
    if tx:
        ax.plot(tx, ty, color=_TRAIN_COLOR, lw=1.2, label=train_label, marker="." if len(tx) < 30 else None)
    if vx:
        ax.plot(vx, vy, color=_VALID_COLOR, lw=1.0, ls="--", marker="o", ms=6, label="validation (per epoch)")
    if not tx and not vx:
        _no_data(ax, "not logged")
    _style(ax, title, ylabel)


def plot_training(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Chart a run's log.jsonl: reconstruction, KL, β and validation negative ELBO over steps.

    Writes ``training.png`` (four panels) into `out_dir` (default ``RUN_DIR/plots``) and
    returns the paths written. Raises CheckpointError when the run has no training log.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no such run directory: {run_dir}")
    records = read_log(run_dir)
    steps, epochs = _by_step(records, StepRecord), _by_step(records, EpochRecord)
    if not steps and not epochs:
        raise CheckpointError(
            f"{run_dir} has no training log ({LOG} is missing or empty); train with `poetvae train` first"
        )
    out_dir = Path(out_dir) if out_dir is not None else RunDir(run_dir).plots

    fig = _new_figure()
    (ax_rec, ax_kl), (ax_beta, ax_nelbo) = fig.subplots(2, 2, sharex=True)

    _train_vs_valid(
        ax_rec, steps, epochs, lambda r: r.rec, _valid("rec"), "Reconstruction (cross-entropy)", "nats per poem"
    )
    _train_vs_valid(
        ax_kl, steps, epochs, lambda r: r.kl, _valid("kl"), "KL divergence  KL(q(z|x) ‖ p(z))", "nats per poem"
    )

    bx, by = _series(steps, lambda r: r.beta)
    if bx:
        ax_beta.plot(bx, by, color="tab:green", lw=1.5, drawstyle="steps-post")
        top = max(by)
        ax_beta.set_ylim(-0.05 * max(top, 1e-9), 1.08 * top if top > 0 else 1.0)
    else:
        _no_data(ax_beta, "not logged")
    _style(ax_beta, "KL weight β (annealing schedule)", "β (dimensionless)")

    # Training negative ELBO (rec + KL at β = 1) as a faint reference for the validation one.
    nx, ny = _series(steps, _train_nelbo)
    vx, vy = _series(epochs, _valid("nelbo"))
    if nx:
        ax_nelbo.plot(nx, ny, color=_TRAIN_COLOR, lw=1.0, alpha=0.35, label="train (rec + KL)")
    if vx:
        ax_nelbo.plot(vx, vy, color=_VALID_COLOR, lw=1.5, marker="o", ms=6, label="validation")
        i = int(np.argmin(vy))
        ax_nelbo.plot(
            [vx[i]],
            [vy[i]],
            marker="*",
            ms=15,
            color="tab:red",
            ls="none",
            label=f"best: {vy[i]:.2f} at step {vx[i]:g}",
        )
        if nx:  # keep the validation points in view when early training values are far above
            lo, hi = min(vy + ny), max(vy)
            span = max(hi - lo, 1e-6)
            ax_nelbo.set_ylim(lo - 0.1 * span, max(hi + 0.6 * span, lo + 0.5))
    elif not nx:
        _no_data(ax_nelbo, "not logged")
    if not vx:
        _no_data(ax_nelbo, "no validation split" if epochs else "no epoch finished yet", 0.9 if nx else 0.5)
    _style(ax_nelbo, "Validation negative ELBO", "nats per poem")

    # Summary line: how far the run went.
    last_step = max([float(r.step) for r in steps + epochs])
    parts = [f"step {last_step:g}"]
    ep = [e for e in (_num(r.epoch) for r in epochs) if e is not None]
    if ep:
        parts.append(f"epoch {max(ep):g}")
    latest = max(steps + epochs, key=lambda r: (float(r.step), isinstance(r, EpochRecord)))
    secs = _num(latest.seconds)
    if secs is not None:
        parts.append(f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.1f} s")
    if vy:
        parts.append(f"best valid −ELBO {min(vy):.2f} nats")
    fig.suptitle(f"Training run {run_dir.resolve().name}  ({', '.join(parts)})")

    return [_save_png(fig, out_dir / TRAINING_PNG)]


# ---- fonts for Chinese labels ------------------------------------------------------------
@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except Exception:  # an unreadable or unsupported font file: it covers nothing
        return frozenset()


@functools.lru_cache(maxsize=1)
def _default_font() -> tuple[str, frozenset[int]]:
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)
    return path, _charmap(path)


def _find_font(needed: frozenset[int]) -> tuple[str | None, frozenset[int]]:
    """The installed font family covering most of `needed` (CJK-sounding names first)."""
    if not needed:
        return None, frozenset()
    from matplotlib import font_manager

    # matplotlib's own "Last Resort" font maps every code point to a placeholder box: no use.
    fonts = [
        f
        for f in font_manager.fontManager.ttflist
        if f.fname.lower().endswith((".ttf", ".otf", ".ttc")) and "last resort" not in f.name.lower()
    ]
    hinted = [f for f in fonts if any(h in f.name.lower() for h in _CJK_HINTS)]
    others = [f for f in fonts if f not in hinted]
    best, best_cover = None, frozenset()
    for f in hinted + others:
        cover = needed & _charmap(f.fname)
        if len(cover) > len(best_cover):
            best, best_cover = f.name, cover
            if cover == needed:
                break
    return best, best_cover


def _pinyin(text: str) -> str:
    from pypinyin import Style, lazy_pinyin

    parts = [p.strip() for p in lazy_pinyin(text, style=Style.TONE, errors="default")]
    return " ".join(p for p in parts if p)


def _display_texts(texts: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Texts as they will render, and the font family list to draw them with.

    A text whose characters the default font (plus the best CJK font found) all has is kept;
    any other is transliterated into pinyin. Distinct texts stay distinct."""
    default_path, default_map = _default_font()
    needed = frozenset(ord(c) for t in texts for c in t if not c.isspace()) - default_map
    family, cover = _find_font(needed)
    have = default_map | cover
    shown, seen = [], Counter()
    for t in texts:
        s = t if all(ord(c) in have or c.isspace() for c in t) else _pinyin(t)
        seen[s] += 1
        shown.append(s if seen[s] == 1 else f"{s} #{seen[s]}")
    if family is None:
        return shown, None
    from matplotlib import font_manager

    default_family = font_manager.FontProperties(fname=default_path).get_name()
    return shown, [default_family, family]


# ---- latent space -------------------------------------------------------------------------
def pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of `x` (N, Z) onto their first two principal components.

    Returns the (N, 2) coordinates and the two explained-variance ratios. With Z == 1 (or
    rank-1 data) the second coordinate is all zeros and explains 0 %."""
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, s.size)
    coords = np.zeros((x.shape[0], 2))
    coords[:, :k] = u[:, :k] * s[:k]
    # A deterministic sign: each component's largest loading is positive.
    for j in range(k):
        if vt[j, np.argmax(np.abs(vt[j]))] < 0:
            coords[:, j] *= -1
    var = s**2
    total = var.sum()
    ratios = np.zeros(2)
    if total > 0:
        ratios[:k] = var[:k] / total
    return coords, ratios


def plot_latent(
    mu: np.ndarray,
    labels: Sequence[str],
    out_path: Path,
    title: str = "Posterior means μ of the latent code (PCA)",
    max_labels: int = MAX_LABELS,
) -> Path:
    """Scatter the 2-D PCA of posterior means `mu` (N, Z), coloured by `labels` (N strings).

    The `max_labels` most frequent labels get a colour and a legend entry (with counts);
    the rest are grey "other". Writes a PNG to `out_path` and returns it. Raises PlotError
    for fewer than two points, a label count that differs from N, or non-finite values.
    """
    if hasattr(mu, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        mu = mu.detach().cpu().numpy()
    try:
        x = np.asarray(mu, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlotError("posterior means must be a numeric (N, Z) array") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise PlotError(f"posterior means must be an (N, Z) array, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2:
        raise PlotError(f"need at least 2 poems to plot the latent space, got {n}")
    if not np.isfinite(x).all():
        raise PlotError("posterior means contain NaN or infinite values")
    labels = [str(lab) for lab in labels]
    if len(labels) != n:
        raise PlotError(f"got {len(labels)} labels for {n} poems")

    coords, ratios = pca2(x)
    counts = Counter(labels)
    top = [lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, max_labels)]]
    others = n - sum(counts[lab] for lab in top)
    shown, family = _display_texts(top + [title])
    shown_labels, shown_title = shown[:-1], shown[-1]

    from matplotlib.font_manager import FontProperties

    prop = FontProperties(family=family, size="large") if family else None
    legend_prop = FontProperties(family=family, size="small") if family else FontProperties(size="small")
    fig = _new_figure()
    ax = fig.add_subplot()
    lab_arr = np.array(labels, dtype=object)
    small = n > 2000
    size, alpha = (6, 0.5) if small else (18, 0.75)
    if others:
        mask = ~np.isin(lab_arr, np.array(top, dtype=object))
        ax.scatter(
            coords[mask, 0],
            coords[mask, 1],
            s=size,
            c=_OTHER_COLOR,
            alpha=0.5,
            linewidths=0,
            label=f"other ({others})",
            zorder=1,
        )
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(top) <= 10 else "tab20"]
    # Draw the largest group first so smaller groups stay visible on top of it.
    for i, (lab, disp) in enumerate(zip(top, shown_labels)):
        mask = lab_arr == lab
        ax.scatter(
            coords[mask, 0],
            coords[mask, 1],
            s=size,
            color=palette(i % palette.N),
            alpha=alpha,
            linewidths=0,
            label=f"{disp} ({counts[lab]})",
            zorder=2 + i,
        )

    z = x.shape[1]
    ax.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}% of variance)")
    if z > 1:
        ax.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}% of variance)")
    else:
        ax.set_ylabel("PC2 (none: Z = 1, padded with 0)")
        ax.set_yticks([0.0])
    ax.set_title(shown_title, fontproperties=prop)
    ax.grid(True, alpha=0.35)
    ax.set_aspect("auto")
    handles, texts = ax.get_legend_handles_labels()
    if others:  # "other" last in the legend
        handles, texts = handles[1:] + handles[:1], texts[1:] + texts[:1]
    ax.legend(
        handles,
        texts,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        prop=legend_prop,
        markerscale=1.5 if not small else 2.5,
        title=f"{n} poems, Z = {z}",
        title_fontsize="small",
        frameon=False,
    )
    return _save_png(fig, Path(out_path))


def plot_latent_of_run(run_dir: Path, poems: Sequence[Any], out_dir: Path | None = None, device: str = "auto") -> Path:
    """latent.png: the posterior means of `poems` under the run's model, in 2-D PCA,
    coloured by the pingshui rhyme group of line 2's last character."""
    from poetvae import prosody
    from poetvae.poet import Poet

    poet = Poet.load(run_dir, device=device)
    mu, _ = poet.encode(poems, allow_unk=True)
    labels = []
    for p in poems:
        groups = sorted(prosody.rhyme_groups(p.lines[1][-1], "pingshui", prosody.Tone.PING)) or sorted(
            prosody.rhyme_groups(p.lines[1][-1], "pingshui")
        )
        labels.append(groups[0] if groups else "?")
    out_dir = Path(out_dir) if out_dir is not None else RunDir(run_dir).plots
    return plot_latent(
        mu,
        labels,
        out_dir / "latent.png",
        title="Posterior means of the held-out poems (PCA), by rhyme group of line 2",
    )
