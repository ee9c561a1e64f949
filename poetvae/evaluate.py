"""Measuring a model honestly. This is the only copy of each metric: `poetvae evaluate`
and the tests all call these functions, and training's validation pass (`elbo_terms`,
which lives with training in poetvae.train) is reported here too.

    elbo_terms          mean rec / KL / -ELBO / perplexity (from poetvae.train)
    iw_nll              importance-weighted NLL per poem (Burda et al. 2016)
    active_units        latent dims the encoder uses (Burda et al. 2016)
    mutual_information  I(x; z) under q (He et al. 2019's estimator)
    reconstruction_accuracy  characters recovered by greedy decoding of E_q[z|x]
                        (compared by form.matching_chars, as Poet.reconstruct does)
    distinct_poems, distinct_n, copy_rates, rhyme_rate, same_char_rhyme_rate, tone_rate,
    doubled_rate, thrice_rate, well_formed_rate,
    sample_stats        statistics of lists of poems (plain Python, no model)
    evaluate_run        the whole report, an EvaluationReport (`to_dict()` is
                        `poetvae evaluate --json`)

Every model-side metric runs whole batches in eval mode without gradients, restores the
model's train/eval mode afterwards, and is deterministic for a given generator / seed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from poetvae.config import check_seed
from poetvae.controls import Controls
from poetvae.decode import DecodeOptions, DecodeTables, generate
from poetvae.form import FORM, Poem, matching_chars
from poetvae.model import PoetVAE
from poetvae.poet import Poet, check_prior
from poetvae.prior import seeded_rows
from poetvae.prosody import check_scheme, rhyme_ok, same_char_rhyme, tone_24_ok
from poetvae.records import perplexity
from poetvae.train import elbo_terms, eval_mode
from poetvae.vocab import Vocab

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

LOG_2PI = math.log(2 * math.pi)
PoemLines = Sequence[str]


def _device(model: PoetVAE) -> torch.device:
    return next(model.parameters()).device


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh CPU one seeded with 0: metrics are
    deterministic by default. Noise is always drawn on the generator's own device and then
    moved, so a CPU generator gives the same draws whatever device the model is on."""
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0)


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return eps.to(like.device)


def _rec(model: PoetVAE, tokens: Tensor, z: Tensor) -> Tensor:
    """-log p(x|z) per row (nats): the summed token cross-entropy, <pad> ignored.

    Computed by `model.nll_given_z`, the term `model.loss` uses, so the likelihood here is
    by construction the same term that training minimises.
    """
    return model.nll_given_z(z, tokens)


@torch.no_grad()
def _posteriors(model: PoetVAE, tokens: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """mu, logvar (N, Z) of q(z|x) for every row, in batches, in eval mode."""
    with eval_mode(model):
        parts = [model.encode(tokens[i : i + batch_size]) for i in range(0, tokens.size(0), batch_size)]
    if not parts:
        z = tokens.new_zeros(0, model.cfg.latent_dim, dtype=torch.float)
        return z, z
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ---------------------------------------------------------------------------------------
# Likelihood
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def iw_nll(
    model: PoetVAE, tokens: Tensor, k: int = 100, batch_size: int = 2048, generator: torch.Generator | None = None
) -> Tensor:
    """Importance-weighted negative log-likelihood per poem, (N,) nats (Burda et al. 2016,
    "Importance Weighted Autoencoders", eq. 8):

        -log p(x) ~= -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)

    In expectation an upper bound on -log p(x) for every K: equal to the -ELBO at K = 1,
    tightening monotonically to the exact value as K grows (Burda et al., theorem 1).
    log p(x|z) is minus the summed token cross-entropy with <pad> ignored, i.e. model.loss's
    "rec". For the no-latent baseline (model.encoder is None, z = 0) the value is the exact
    NLL, the reconstruction term itself, and K is irrelevant.

    tokens: (N, FORM.seq_len) rows of Vocab.encode_batch. batch_size: decoder rows (poems x
    samples) per model call; K is split into chunks when it is larger. generator: source
    of the z noise (None: a CPU generator seeded 0); results are deterministic for a given
    generator state and batch_size.
    """
    device = _device(model)
    tokens = tokens.to(device)
    n = tokens.size(0)
    out = torch.empty(n, dtype=torch.float64)
    with eval_mode(model):
        if model.encoder is None:
            for i in range(0, n, batch_size):
                batch = tokens[i : i + batch_size]
                # exactly what model.loss gives with z = 0: nothing is sampled
                out[i : i + batch.size(0)] = model.loss(batch, model(batch))["rec"].double().cpu()
            return out
        if k < 1:
            raise ValueError(f"iw_nll needs k >= 1 samples, not {k}")
        g = _generator(generator)
        poems_per_batch = max(1, batch_size // k)
        k_chunk = min(k, batch_size)  # only below k when one poem's K samples exceed a batch
        for i in range(0, n, poems_per_batch):
            batch = tokens[i : i + poems_per_batch]
            b = batch.size(0)
            mu, logvar = model.encode(batch)  # (b, Z)
            std = torch.exp(0.5 * logvar)
            log_w = torch.empty(b, k, dtype=torch.float64, device=device)
            for j in range(0, k, k_chunk):
                kc = min(k_chunk, k - j)
                eps = _randn((b, kc, mu.size(1)), g, mu)
                z = mu[:, None] + std[:, None] * eps  # (b, kc, Z)
                # one decoder call for all b * kc (poem, sample) pairs: poem-major rows
                rec = _rec(model, batch.repeat_interleave(kc, dim=0), z.reshape(b * kc, -1)).view(b, kc)
                # log N(z; 0, I) - log N(z; mu, sigma^2); the 2*pi terms cancel
                log_pz = -0.5 * z.double().pow(2).sum(-1)
                log_qz = -0.5 * (eps.double().pow(2) + logvar.double()[:, None]).sum(-1)
                log_w[:, j : j + kc] = -rec.double() + log_pz - log_qz
            # logsumexp - log K: the stable log of the mean importance weight
            out[i : i + b] = -(torch.logsumexp(log_w, dim=1) - math.log(k)).cpu()
    return out


# ---------------------------------------------------------------------------------------
# The latent space
# ---------------------------------------------------------------------------------------


def active_units(mu: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Active units (Burda et al. 2016, section 5.2): a dim u is active when

        A_u = Cov_x( E_{q(z|x)}[z_u] ) = Var_x( mu_u(x) ) > threshold   (0.01 in the paper)

    mu: (N, Z) posterior means over a set of poems. Returns the number of active dims and
    the per-dim variances (Z,), unbiased over poems (as He et al. 2019's calc_au). Fewer
    than 2 poems give variances of 0 rather than NaN.
    """
    mu = mu.detach().double()
    if mu.size(0) < 2:
        var = torch.zeros(mu.size(1), dtype=torch.float64, device=mu.device)
    else:
        var = mu.var(dim=0)
    return int((var > threshold).sum().item()), var.float().cpu()


def mutual_information(
    mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None, chunk: int = 1024
) -> float:
    """I(x; z) under q, in nats, with the estimator of He et al. 2019 ("Lagging Inference
    Networks and Posterior Collapse in Variational Autoencoders", calc_mi):

        I = E_x[ E_{q(z|x)} log q(z|x) ] - E_x E_{q(z|x)}[ log q(z) ],
        q(z) ~= (1/N) sum_j q(z|x_j)      (the aggregate posterior as a mixture of the set)

    The first term is the negative entropy in closed form, -Z/2 log 2 pi - 1/2 sum(1 + logvar),
    averaged over poems; the second uses one sample z_i ~ q(z|x_i) per poem against all N
    posteriors of the set (so pass the whole set, ideally N >= 512, in one call). It lies
    near [0, log N]: the closed-form entropy lets sampling noise push it slightly past
    either end. mu, logvar: (N, Z). A no-latent model (mu and logvar all zero) gives 0.
    chunk: rows of the N x N density matrix per step (memory only; same result).
    """
    mu, logvar = mu.detach().double(), logvar.detach().double()
    n, zdim = mu.shape
    if n < 2 or zdim == 0 or (not mu.any() and not logvar.any()):
        # no latent (z = 0 for every poem) or a set too small to say anything
        return 0.0
    g = _generator(generator)
    z = mu + torch.exp(0.5 * logvar) * _randn((n, zdim), g, mu)
    neg_entropy = (-0.5 * zdim * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()
    inv_var = torch.exp(-logvar)  # (N, Z)
    mu_iv = mu * inv_var
    mu2_iv = (mu * mu_iv).sum(-1)  # (N,)
    log_norm = -0.5 * (zdim * LOG_2PI + logvar.sum(-1))  # (N,)
    log_qz = torch.empty(n, dtype=torch.float64, device=mu.device)
    for i in range(0, n, chunk):
        zc = z[i : i + chunk]
        # sum_d (z_d - mu_jd)^2 / var_jd for every (sample i, posterior j), as matrix
        # products in float64: O(N^2 Z) time but only chunk x N memory.
        sq = (zc * zc) @ inv_var.T - 2 * zc @ mu_iv.T + mu2_iv[None]
        log_density = -0.5 * sq.clamp_min(0) + log_norm[None]  # (chunk, N)
        log_qz[i : i + chunk] = torch.logsumexp(log_density, dim=1) - math.log(n)
    return float(neg_entropy - log_qz.mean())


@torch.no_grad()
def reconstruction_accuracy(
    model: PoetVAE,
    tokens: Tensor,
    vocab: Vocab,
    batch_size: int = 1024,
    mu: Tensor | None = None,
    repetition_rule: bool = True,
) -> float:
    """Share of the 20 characters that survive x -> mu(x) -> greedy decode, position by
    position:

        acc = (1 / 20N) sum_i sum_{p=1..20} [ decode(mu(x_i))_p == x_{i,p} ]

    The decoder is `decode.generate`, greedy and format-constrained (always 20 characters).
    Characters are compared, not token ids, so word (jieba) vocabularies are measured the
    same way; an input <unk> never matches, since the decoder never writes one.
    `mu` (N, Z): the posterior means of `tokens`, when the caller has them already.
    `repetition_rule`: decode with it (the default, as Poet.reconstruct), or without.
    """
    device = _device(model)
    tokens = tokens.to(device)
    n = tokens.size(0)
    if n == 0:
        return 0.0
    matches = 0
    with eval_mode(model):
        tables = DecodeTables(model, vocab, device)  # once, not per batch
        for i in range(0, n, batch_size):
            batch = tokens[i : i + batch_size]
            means = model.encode(batch)[0] if mu is None else mu[i : i + batch_size].to(device)
            options = DecodeOptions(greedy=True, repetition_rule=repetition_rule)
            ids = generate(model, means, vocab, options, tables=tables)[0]  # the token rows
            for got, want in zip(ids.tolist(), batch.tolist()):
                matches += sum(matching_chars(vocab.decode(want), vocab.decode(got)))
    return matches / (FORM.chars * n)


# ---------------------------------------------------------------------------------------
# Statistics of a list of poems (samples or the human reference); plain Python
# ---------------------------------------------------------------------------------------


def _as_lines(poem: Any) -> tuple[str, ...]:
    """A poem's lines, whether given as a sequence of strings or an object with .lines
    (Poem, poet.Sample)."""
    return tuple(getattr(poem, "lines", poem))


def distinct_poems(poems: Sequence[PoemLines]) -> int:
    """Number of different poems in the list (exact match of all 4 lines)."""
    return len({_as_lines(p) for p in poems})


def distinct_n(poems: Sequence[PoemLines], n: int) -> float:
    """distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models"): unique character n-grams / all character n-grams, over the whole
    list, n-grams taken within lines (never across a line break). 0.0 when there are none.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, not {n}")
    seen: set[str] = set()
    total = 0
    for p in poems:
        for line in _as_lines(p):
            grams = [line[i : i + n] for i in range(len(line) - n + 1)]
            total += len(grams)
            seen.update(grams)
    return len(seen) / total if total else 0.0


def copy_rates(poems: Sequence[PoemLines], train_poems: Sequence[PoemLines]) -> tuple[float, float]:
    """(share of poems found verbatim among the training poems, share of lines found
    verbatim among the training lines). Memorisation shows up here first: a model that
    copies its training set has low NLL and beautiful samples that are not its own."""
    train = {_as_lines(p) for p in train_poems}
    train_lines = {line for p in train for line in p}
    all_poems = [_as_lines(p) for p in poems]
    lines = [line for p in all_poems for line in p]
    copied = sum(p in train for p in all_poems) / len(all_poems) if all_poems else 0.0
    copied_lines = sum(line in train_lines for line in lines) / len(lines) if lines else 0.0
    return copied, copied_lines


def _quatrains(poems: Sequence[PoemLines]) -> list[tuple[str, ...]]:
    return [lines for lines in map(_as_lines, poems) if len(lines) >= 4 and lines[1] and lines[3]]


def rhyme_rate(poems: Sequence[PoemLines], scheme: str = "pingshui") -> float:
    """Share of poems whose lines 2 and 4 rhyme (prosody.rhyme_ok: a shared rhyme group, 平
    or 仄, on two different characters; line 4 ending on line 2's own character, 重韵, is
    no rhyme). A poem with fewer than 4 lines or an empty line 2 or 4 counts as not
    rhyming. 0.0 for an empty list."""
    check_scheme(scheme)
    return sum(rhyme_ok(lines, scheme) for lines in _quatrains(poems)) / len(poems) if poems else 0.0


def same_char_rhyme_rate(poems: Sequence[PoemLines]) -> float:
    """重韵: share of poems whose line 4 ends on line 2's own character (prosody.same_char_rhyme),
    which rhyme_rate counts as no rhyme. 0.0 for an empty list."""
    return sum(same_char_rhyme(lines) for lines in _quatrains(poems)) / len(poems) if poems else 0.0


def doubled_rate(poems: Sequence[PoemLines]) -> float:
    """Share of poems with a character twice in a row inside a line: 叠字 (处处) or a
    stutter (水水). 0.0 for an empty list."""
    doubled = sum(any(a == b for line in _as_lines(p) for a, b in zip(line, line[1:])) for p in poems)
    return doubled / len(poems) if poems else 0.0


def thrice_rate(poems: Sequence[PoemLines]) -> float:
    """Share of poems that use one character three times or more. 0.0 for an empty list."""
    thrice = sum(max(Counter("".join(_as_lines(p))).values(), default=0) >= 3 for p in poems)
    return thrice / len(poems) if poems else 0.0


def tone_rate(poems: Sequence[PoemLines], scheme: str = "pingshui") -> float:
    """二四异: share of lines whose 2nd and 4th characters differ in 平仄
    (prosody.tone_24_ok), among the lines where that is decidable (both characters of a
    single known tone class; lines shorter than 4 characters are skipped too). 0.0 when no
    line is decidable."""
    check_scheme(scheme)
    ok = decided = 0
    for p in poems:
        for line in _as_lines(p):
            if len(line) < 4:
                continue
            verdict = tone_24_ok(line, scheme)
            if verdict is not None:
                decided += 1
                ok += verdict
    return ok / decided if decided else 0.0


def _well_formed(lines: tuple[str, ...]) -> bool:
    return FORM.fits(lines)


def well_formed_rate(poems: Sequence[PoemLines]) -> float:
    """Share of poems that are exactly 4 lines of 5 Han characters. 0.0 for an empty list."""
    return sum(_well_formed(_as_lines(p)) for p in poems) / len(poems) if poems else 0.0


@dataclass(frozen=True)
class SampleStats:
    """The statistics of a list of poems (sample_stats): the "samples" and "reference"
    sections of an EvaluationReport."""

    poems: int  # number of poems in the list
    distinct: int  # number of different poems (distinct_poems)
    distinct_1: float  # unique characters / all characters (distinct_n, n = 1, within lines)
    distinct_2: float  # unique character bigrams / all bigrams within lines (distinct_n, n = 2)
    copied_poems: float | None  # share of poems found verbatim in the training split (copy_rates);
    # None when the training split is not at hand (a bundled model: NEEDS_TRAINING_SPLIT)
    copied_lines: float | None  # share of lines found verbatim among the training lines (copy_rates)
    rhyme_rate: float  # share of poems whose lines 2 and 4 rhyme in the scheme, on two different
    # characters (rhyme_rate; before issue 21 a 重韵 counted as a rhyme too)
    tone_rate: float  # 二四异: share of decidable lines whose 2nd and 4th characters differ in 平仄
    well_formed: float  # share of poems of exactly 4 lines x 5 Han characters (well_formed_rate)
    rhyme_pingshui: float  # rhyme_rate in 平水韵, whatever the scheme
    rhyme_xinyun: float  # rhyme_rate in 中华新韵 (modern readings), whatever the scheme
    same_char_rhyme: float  # 重韵: share of poems whose line 4 ends on line 2's character
    doubled_char: float  # share of poems with a character twice in a row (doubled_rate)
    char_3_times: float  # share of poems using one character 3 times or more (thrice_rate)

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def sample_stats(
    poems: Sequence[PoemLines], train_poems: Sequence[PoemLines] | None, scheme: str = "pingshui"
) -> SampleStats:
    """All statistics of a list of poems against the training poems (None: not at hand, and
    the copy rates are None), rhymes and tones in `scheme` (see SampleStats for each)."""
    poems = [_as_lines(p) for p in poems]
    copied, copied_lines = copy_rates(poems, train_poems) if train_poems is not None else (None, None)
    return SampleStats(
        poems=len(poems),
        distinct=distinct_poems(poems),
        distinct_1=distinct_n(poems, 1),
        distinct_2=distinct_n(poems, 2),
        copied_poems=copied,
        copied_lines=copied_lines,
        rhyme_rate=rhyme_rate(poems, scheme),
        tone_rate=tone_rate(poems, scheme),
        well_formed=well_formed_rate(poems),
        rhyme_pingshui=rhyme_rate(poems, "pingshui"),
        rhyme_xinyun=rhyme_rate(poems, "xinyun"),
        same_char_rhyme=same_char_rhyme_rate(poems),
        doubled_char=doubled_rate(poems),
        char_3_times=thrice_rate(poems),
    )


# ---------------------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Likelihood:
    """On the held-out poems. All nats are natural-log units, averaged over the poems."""

    iw_nll: float  # importance-weighted NLL, -log p(x), nats per poem (Burda et al. 2016):
    # an upper bound on the true NLL that tightens with more samples; exact without a latent
    iw_samples: int  # K, the samples from q(z|x) per poem for iw_nll
    ppl: float  # exp(iw_nll / 21): perplexity per token position (20 characters + <eos>,
    # whatever the tokenizer, so char and word models compare)
    rec: float  # reconstruction term -E_q log p(x|z), nats per poem (one z per poem)
    kl: float  # KL(q(z|x) || N(0, I)), nats per poem (0 for the no-latent model)
    nelbo: float  # rec + kl: the negative ELBO, nats per poem (>= iw_nll on average)


@dataclass(frozen=True)
class Latent:
    """The posteriors q(z|x) of the held-out poems."""

    latent_dim: int  # size of z (0 for the no-latent model)
    active_units: int  # dims with Var_x(E_q[z|x]) > 0.01 (Burda et al. 2016)
    mutual_information: float  # I(x; z) under q in nats, He et al. 2019's estimator with
    # the held-out set as the aggregate posterior; at most about log(poems)
    reconstruction_accuracy: float  # share of characters recovered, position by position,
    # by greedy decoding of the posterior mean
    train_reconstruction_accuracy: float | None  # the same on training poems (None when the
    # training split is not at hand: NEEDS_TRAINING_SPLIT): at most
    # TRAIN_RECONSTRUCTED of them, chosen with the seed (0.0 when there are none). Far above
    # the held-out figure: the model memorises rather than encodes


@dataclass(frozen=True)
class ReportMeta:
    poems: int  # number of held-out poems
    unk_rate: float  # share of held-out characters missing from the vocabulary (read as
    # <unk>, which the likelihood then scores as <unk>)
    temperature: float  # evaluate_run's arguments
    prior: str  # where the samples' z came from: "normal" N(0, I) or "fitted" (poetvae.prior)
    repetition_rule: bool  # whether samples and reconstructions were decoded with it (poetvae.repetition)
    rerank: int  # candidates decoded per sample, the best kept (Poet.sample; 1: none)
    prosody_weight: float  # with rerank > 1: the weight of the prosody score in that choice
    bigram_correction: float  # how far the temperature spared the corpus's bigrams (poetvae.bigrams)
    seed: int
    scheme: str
    device: str  # where the model ran
    seconds: float  # wall-clock time of the evaluation


@dataclass(frozen=True)
class EvaluationReport:
    """What `evaluate_run` measures; `to_dict()` is `poetvae evaluate --json`."""

    likelihood: Likelihood
    latent: Latent
    samples: SampleStats  # poems from the prior (meta.prior), decoded at the temperature
    reference: SampleStats  # the held-out poems themselves (human verse), copy rates also
    # against the training split
    meta: ReportMeta

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The JSON-ready form: one dict per section, the fields in their order; a number
        that is not finite (a model with NaN or infinite weights) is None (JSON null)."""
        return {
            section: {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}
            for section, fields in dataclasses.asdict(self).items()
        }


# The figures that need the poems a model trained on: a bundled model (poetvae.models) keeps
# none, so evaluating one on a held-out corpus leaves out these, and only these.
NEEDS_TRAINING_SPLIT = (
    "latent.train_reconstruction_accuracy",
    "samples.copied_poems",
    "samples.copied_lines",
    "reference.copied_poems",
    "reference.copied_lines",
)
TRAIN_RECONSTRUCTED = 1000  # training poems whose reconstruction accuracy evaluate_run measures


def _train_sample(poet: Poet, train: list[Poem], seed: int) -> Tensor:
    """The token rows of at most TRAIN_RECONSTRUCTED training poems, chosen with the seed
    (a fixed sample: the figure is comparable between runs on the same corpus)."""
    rows = seeded_rows(len(train), TRAIN_RECONSTRUCTED, seed)
    return poet.tokens([train[i] for i in rows.tolist()], allow_unk=True)


def evaluate_run(
    poet: Poet,
    heldout: list[Poem],
    train: list[Poem] | None,
    *,
    samples: int = 1000,
    iw_samples: int = 100,
    temperature: float = 1.0,
    seed: int = 0,
    scheme: str = "pingshui",
    prior: str = "normal",
    pretraining: Sequence[Poem] = (),
    repetition_rule: bool = True,
    rerank: int = 1,
    prosody_weight: float = 0.0,
    bigram_correction: float = 1.0,
) -> EvaluationReport:
    """Evaluate a trained model on held-out poems (the fields: EvaluationReport and the
    classes of its sections). `samples` poems are drawn from `prior` ("normal": N(0, I);
    "fitted": the run's fitted prior, poetvae.prior) at `temperature`, iw_nll uses
    `iw_samples` samples per poem, rhymes and tones are read in `scheme` (and the rhyme
    in both schemes too). Samples and reconstructions are decoded with the repetition rule
    (poetvae.repetition) unless `repetition_rule` is False; each sample is the best of
    `rerank` candidates by log-probability + `prosody_weight` x prosody score, as `poetvae
    sample --rerank N --prosody-weight W` chooses it, with `bigram_correction` (poetvae.bigrams)
    as `--bigram-correction`. Reconstruction
    accuracy is measured on the held-out poems and on at most TRAIN_RECONSTRUCTED
    training poems. Copies are counted against `train` and `pretraining` (the poems of the
    runs a fine-tuned model started from). With `train` None (a bundled model, which keeps
    no data) the figures of NEEDS_TRAINING_SPLIT are None. Deterministic for a seed (on a
    given device).
    """
    start = time.perf_counter()
    check_scheme(scheme)
    check_seed("seed", seed)
    check_prior(prior)
    if not heldout:
        raise ValueError("evaluate_run needs at least one held-out poem")
    model, device = poet.model, poet.device
    lines = [p.lines for p in heldout]
    tokens = poet.tokens(heldout, allow_unk=True)

    nll = iw_nll(model, tokens, k=iw_samples, generator=torch.Generator().manual_seed(seed))
    iw = float(nll.mean())
    elbo = elbo_terms(model, tokens, seed=seed)

    mu, logvar = _posteriors(model, tokens)
    au, _ = active_units(mu)
    no_latent = model.encoder is None
    latent = Latent(
        latent_dim=0 if no_latent else model.cfg.latent_dim,
        active_units=0 if no_latent else au,
        mutual_information=mutual_information(mu, logvar, torch.Generator().manual_seed(seed)),
        reconstruction_accuracy=reconstruction_accuracy(
            model, tokens, poet.vocab, mu=mu, repetition_rule=repetition_rule
        ),
        train_reconstruction_accuracy=None
        if train is None
        else reconstruction_accuracy(
            model, _train_sample(poet, train, seed), poet.vocab, repetition_rule=repetition_rule
        ),
    )

    # everything the model was trained on, for the copy counts
    seen = None if train is None else [*train, *pretraining]
    options = DecodeOptions(
        temperature=temperature,
        seed=seed,
        repetition_rule=repetition_rule,
        rerank=rerank,
        prosody_weight=prosody_weight,
        bigram_correction=bigram_correction,
        controls=Controls(scheme=scheme),  # the scheme of the rerank's prosody score
    )
    drawn = poet.sample(samples, options, prior=prior) if samples > 0 else []
    return EvaluationReport(
        likelihood=Likelihood(
            iw_nll=iw,
            iw_samples=iw_samples,
            ppl=perplexity(iw),
            rec=elbo.rec,
            kl=elbo.kl,
            nelbo=elbo.nelbo,
        ),
        latent=latent,
        samples=sample_stats([s.lines for s in drawn], seen, scheme),
        reference=sample_stats(lines, seen, scheme),
        meta=ReportMeta(
            poems=len(heldout),
            unk_rate=poet.vocab.unk_rate(lines),
            temperature=temperature,
            prior=prior,
            repetition_rule=repetition_rule,
            rerank=rerank,
            prosody_weight=prosody_weight,
            bigram_correction=bigram_correction,
            seed=seed,
            scheme=scheme,
            device=str(device),
            seconds=time.perf_counter() - start,
        ),
    )
