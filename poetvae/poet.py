"""The library's front door: a trained model plus its vocabulary, working on poems as text.

    from poetvae import Poet
    from poetvae.decode import DecodeOptions
    poet = Poet.load("runs/quatrains")
    for s in poet.sample(4, DecodeOptions(temperature=0.8, seed=1)):
        print(s.layout())
    path = poet.interpolate("床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                            "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", steps=8)
    [rec] = poet.reconstruct(["床前明月光，疑是地上霜。举头望明月，低头思故乡。"])
    print(rec.decoded.oneline(), rec.accuracy)
    variations = poet.vary("床前明月光，疑是地上霜。举头望明月，低头思故乡。", 5, DecodeOptions(seed=1), spread=0.5)
    poet.sample(4, DecodeOptions(seed=1), prior="fitted")   # z from RUN/prior.safetensors

Everything is rebuilt from the run directory alone (config.json, vocab.json,
model.safetensors; prior.safetensors when prior="fitted" asks for it): no flag has to be
repeated at load time, and a bundle (the minimal directory `poetvae export` writes, float16
weights included) loads like a run. poetvae.models.resolve_model(None).path is the model the
commands use without -m.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from poetvae.checkpoint import check_dtypes, file_sha256
from poetvae.config import Config
from poetvae.controls import Controls, backoff_report
from poetvae.decode import DecodeOptions, DecodeTables, generate, latent_path
from poetvae.errors import CheckpointError, ConfigError
from poetvae.form import Poem, matching_chars, parse_poem
from poetvae.hardware import keep_freed_memory, resolve_device
from poetvae.model import PoetVAE
from poetvae.prior import FittedPrior
from poetvae.prosody import prosody_score
from poetvae.rundir import PRIOR, RunDir
from poetvae.vocab import Vocab

PoemLike = str | Poem | Sequence[str]
PRIORS = ("normal", "fitted")  # where sample draws z: N(0, I), or the run's FittedPrior


def check_prior(prior: str) -> str:
    if prior not in PRIORS:
        raise ValueError(f"prior must be normal or fitted, not {prior!r}")
    return prior


@dataclass(frozen=True)
class Sample(Poem):
    """A decoded poem (lines; no title or author) with what decoding knows about it."""

    logprob: float = 0.0  # log p(poem | z) under the decoder, nats
    z: tuple[float, ...] | None = None  # the latent code it was decoded from, when asked for
    backoff: tuple[str, ...] = ()  # controls relaxed to find a candidate


@dataclass(frozen=True)
class Reconstruction:
    """A poem and a poem decoded from its latent code, compared position by position: its
    reconstruction (Poet.reconstruct: the greedy decode of its posterior mean), or any
    decode at that code (the ends of an interpolation path)."""

    given: Poem
    decoded: Sample
    same: tuple[bool, ...]  # FORM.chars flags in reading order: the characters that match

    @classmethod
    def of(cls, given: Poem, decoded: Sample) -> Reconstruction:
        return cls(given, decoded, matching_chars(given.lines, decoded.lines))

    @property
    def accuracy(self) -> float:
        """Share of the characters recovered (what evaluate's reconstruction_accuracy averages)."""
        return sum(self.same) / len(self.same)


class Poet:
    def __init__(
        self,
        model: PoetVAE,
        vocab: Vocab,
        config: Config,
        device: torch.device,
        run_dir: str | Path | None = None,
        weights: str = "best",
    ):
        self.model, self.vocab, self.config, self.device = model.eval(), vocab, config, device
        self.run_dir = Path(run_dir) if run_dir is not None else None  # where fitted_prior is read from
        self.weights = weights  # which of the run's weights the model holds: "best" or "last"
        self._fitted_prior: FittedPrior | None = None

    @functools.cached_property
    def decode_tables(self) -> DecodeTables:
        """The decoder's vocabulary-sized tables, built at the first decode and then reused
        (the weights of a Poet do not change)."""
        return DecodeTables(self.model, self.vocab, self.device)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", weights: str = "best") -> Poet:
        """weights: "best" (model.safetensors, lowest validation rec + kl_max * KL: the
        -ELBO) or "last"."""
        run = RunDir(run_dir)
        header = run.read_header()
        config, vocab = header.config, header.vocab
        if config.model.vocab_size != len(vocab):
            raise CheckpointError(
                f"{run_dir}: config says {config.model.vocab_size} tokens, vocab.json has {len(vocab)}"
            )
        dev = resolve_device(device)
        if dev.type == "cpu":
            keep_freed_memory()
        tensors = run.weights(weights)
        model = PoetVAE(config.model)
        check_dtypes(tensors, model, run.best if weights == "best" else run.last)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f"{run_dir}: the weights do not fit the config ({str(e).splitlines()[0]})") from None
        return cls(model.to(dev), vocab, config, dev, run_dir=run_dir, weights=weights)

    @property
    def fitted_prior(self) -> FittedPrior:
        """The run's fitted prior (RUN/prior.safetensors, poetvae.prior), read at first use;
        or one assigned here (poet.fitted_prior = fit_prior(poet, poems))."""
        if self._fitted_prior is None:
            self._fitted_prior = self._read_fitted_prior()
        return self._fitted_prior

    @fitted_prior.setter
    def fitted_prior(self, prior: FittedPrior) -> None:
        if prior.latent_dim != self.config.model.latent_dim:
            raise ValueError(f"the prior has {prior.latent_dim} dims, the model {self.config.model.latent_dim}")
        self._fitted_prior = prior.to(self.device)

    def _read_fitted_prior(self) -> FittedPrior:
        if not self.config.model.use_latent:
            raise ConfigError("the model has no latent (trained with --no-latent): it has no fitted prior")
        if self.run_dir is None:
            raise CheckpointError("this Poet was not loaded from a run: assign poet.fitted_prior first")
        run = RunDir(self.run_dir)
        refit = f"poetvae fit-prior -m {self.run_dir}"
        if not run.prior.is_file():
            raise CheckpointError(f"{self.run_dir} has no fitted prior ({PRIOR}); fit one with: {refit}")
        prior = FittedPrior.load(run.prior)
        if prior.latent_dim != self.config.model.latent_dim:
            raise CheckpointError(f"{run.prior} has {prior.latent_dim} dims, the model {self.config.model.latent_dim}")
        # A resumed training stopped before its end leaves the prior of older weights.
        if self.weights == "best" and prior.weights_sha256 not in (None, file_sha256(run.best)):
            raise CheckpointError(f"{run.prior} was fitted to other weights than {run.best}; refit it with: {refit}")
        return prior.to(self.device)

    # ---- text <-> tensors ------------------------------------------------------------
    def _lines(self, poem: PoemLike) -> tuple[str, ...]:
        if isinstance(poem, Poem):
            return poem.lines
        if isinstance(poem, str):
            return parse_poem(poem).lines
        return parse_poem("，".join(poem)).lines

    def tokens(self, poems: Sequence[PoemLike], allow_unk: bool = False) -> Tensor:
        """(B, FORM.seq_len) ids of the poems; characters the vocabulary lacks raise VocabError
        naming them, unless allow_unk maps them to <unk>."""
        lines = [self._lines(p) for p in poems]
        if not allow_unk:
            self.vocab.require_known(
                [line for ls in lines for line in ls], "pass allow_unk / --allow-unk to read them as <unk>"
            )
        return self.vocab.encode_batch(lines).to(self.device)

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    @staticmethod
    def _candidates(options: DecodeOptions) -> int:
        """Candidates decoded per z: options.rerank, or 1 where decoding draws nothing
        (greedy, beam search), which would decode the same poem every time."""
        return 1 if options.greedy or options.beam > 1 else options.rerank

    def _samples(self, z: Tensor, options: DecodeOptions, generator: torch.Generator, *, with_z: bool) -> list[Sample]:
        """Decode z; with options.rerank > 1, decode that many candidates per z and keep the
        one with the best log-probability + prosody_weight * prosody_score."""
        rerank = self._candidates(options)
        ids, logprob, backoff = generate(
            self.model,
            z.repeat_interleave(rerank, dim=0),
            self.vocab,
            options,
            generator=generator,
            tables=self.decode_tables,
        )
        if rerank > 1:  # keep the best candidate of each z
            score = logprob
            if options.prosody_weight:
                scheme = options.controls.scheme if options.controls else "pingshui"
                prosody = [prosody_score(self.vocab.decode(row), scheme) for row in ids.tolist()]
                score = score + options.prosody_weight * torch.tensor(prosody, device=score.device)
            keep = score.view(-1, rerank).argmax(dim=1) + torch.arange(0, ids.size(0), rerank, device=score.device)
            ids, logprob, backoff = ids[keep], logprob[keep], backoff[keep]
        zs = [tuple(row) for row in z.tolist()] if with_z else [None] * z.size(0)
        return [
            Sample(self.vocab.decode(row), logprob=lp, z=latent, backoff=tuple(relaxed))
            for row, lp, latent, relaxed in zip(ids.tolist(), logprob.tolist(), zs, backoff_report(backoff))
        ]

    def _decode_draws(
        self, n: int, options: DecodeOptions, draw: Callable[[int, torch.Generator], Tensor], *, with_z: bool
    ) -> Iterator[list[Sample]]:
        """n poems, options.batch_size decoded at a time (candidates of a rerank included):
        z = draw(size, generator), then decoded; one generator, seeded with options.seed, for
        both."""
        generator = self._generator(options.seed)
        per_batch = max(1, options.batch_size // self._candidates(options))
        for start in range(0, n, per_batch):
            size = min(per_batch, n - start)
            yield self._samples(draw(size, generator), options, generator, with_z=with_z)

    # ---- the operations ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, poems: Sequence[PoemLike], allow_unk: bool = False) -> tuple[Tensor, Tensor]:
        """Posterior parameters mu, logvar (B, Z) of q(z|x)."""
        return self.model.encode(self.tokens(poems, allow_unk))

    def decode(self, z: Tensor, options: DecodeOptions = DecodeOptions(), *, with_z: bool = False) -> list[Sample]:
        """A poem for each latent code z (B, Z), decoded with the options (seed: the draws)."""
        return self._samples(z.to(self.device), options, self._generator(options.seed), with_z=with_z)

    def prefix_posterior(self, controls: Controls) -> tuple[Tensor, Tensor]:
        """q(z | prefix): the encoder applied to the given lines followed by <eos>. The
        encoder only ever saw whole poems, so this is a guess at a z that fits the prefix,
        not a posterior the model was trained to give."""
        if not controls.prefix:
            raise ValueError("infer_z needs a prefix")
        self._require_latent("infer z from the given lines")
        self.vocab.require_known(controls.prefix)
        with torch.no_grad():
            return self.model.encode(self.vocab.encode_batch([controls.prefix]).to(self.device))

    def iter_sample(
        self, n: int, options: DecodeOptions = DecodeOptions(), *, with_z: bool = False, prior: str = "normal"
    ) -> Iterator[list[Sample]]:
        """n poems, options.batch_size at a time (for streaming large n). z from the prior:
        "normal" N(0, I), or "fitted", the run's fitted prior (fitted_prior); or with
        options.infer_z, z ~ q(z | the controls' prefix). The seed fixes z and the draws.
        A missing fitted prior raises here, before the first poem."""
        check_prior(prior)
        if options.infer_z and options.controls is not None:
            if prior != "normal":
                raise ValueError("infer_z draws z from q(z | prefix), not from a prior: use prior='normal'")
            mu, logvar = self.prefix_posterior(options.controls)
            std = torch.exp(0.5 * logvar)
            return self._decode_draws(n, options, lambda k, g: mu + std * self._noise(k, g), with_z=with_z)
        if prior == "fitted":
            fitted = self.fitted_prior
            return self._decode_draws(n, options, fitted.sample, with_z=with_z)
        return self._decode_draws(n, options, self._noise, with_z=with_z)

    def _noise(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, Z) draws of N(0, I): the prior itself, or the eps of z = mu + sigma * eps."""
        return self.model.sample_prior(n, self.device, generator)

    def sample(
        self, n: int, options: DecodeOptions = DecodeOptions(), *, with_z: bool = False, prior: str = "normal"
    ) -> list[Sample]:
        """n poems, all at once (see iter_sample). options: temperature, top-k/p, greedy;
        controls (rhyme / tones / acrostic / prefix, poetvae.controls); beam: beam-search
        width; rerank: candidates per z, the best kept by log-probability plus
        prosody_weight x prosody score; seed. prior: "normal" N(0, I) or "fitted"."""
        return [s for batch in self.iter_sample(n, options, with_z=with_z, prior=prior) for s in batch]

    def reconstruct(
        self,
        poems: Sequence[PoemLike],
        allow_unk: bool = False,
        *,
        batch_size: int = 1024,
        repetition_rule: bool = True,
    ) -> list[Reconstruction]:
        """Each poem next to its reconstruction: the greedy decode of its posterior mean,
        compared character by character (Reconstruction.same, .accuracy). Unknown
        characters raise VocabError naming them, unless allow_unk reads them as <unk>
        (which never matches: the decoder does not write it). repetition_rule: decode with
        the repetition rule (poetvae.repetition), as every decode does by default, so that
        the reconstructions are the ends of a greedy interpolation path."""
        self._require_latent("reconstruct a poem")
        given = [p if isinstance(p, Poem) else Poem(self._lines(p)) for p in poems]
        tokens = self.tokens(given, allow_unk)
        out: list[Reconstruction] = []
        for i in range(0, len(given), batch_size):
            with torch.no_grad():
                mu, _ = self.model.encode(tokens[i : i + batch_size])
            decoded = self.decode(mu, DecodeOptions(greedy=True, repetition_rule=repetition_rule))
            out += [Reconstruction.of(g, d) for g, d in zip(given[i : i + batch_size], decoded)]
        return out

    def iter_vary(
        self,
        poem: PoemLike,
        n: int,
        options: DecodeOptions = DecodeOptions(),
        *,
        spread: float = 1.0,
        allow_unk: bool = False,
        with_z: bool = False,
    ) -> Iterator[list[Sample]]:
        """n variations of a poem, options.batch_size at a time (for streaming large n): z =
        mu + spread * sigma * eps, eps ~ N(0, I), around its posterior q(z|x) = N(mu, sigma^2)
        (spread 1: z drawn from q(z|x); 0: the posterior mean itself), decoded with the
        options (temperature, greedy, beam, controls). The seed fixes z and the draws. A
        poem that cannot be read, or a model without a latent, raises here, before the first."""
        if not (math.isfinite(spread) and spread >= 0):
            raise ValueError(f"spread must be a finite number >= 0, not {spread}")
        if options.infer_z:
            raise ValueError("vary draws z around the poem's posterior: infer_z does not apply")
        self._require_latent("vary a poem")
        mu, logvar = self.encode([poem], allow_unk)
        scale = spread * torch.exp(0.5 * logvar)
        return self._decode_draws(n, options, lambda k, g: mu + scale * self._noise(k, g), with_z=with_z)

    def vary(
        self,
        poem: PoemLike,
        n: int,
        options: DecodeOptions = DecodeOptions(),
        *,
        spread: float = 1.0,
        allow_unk: bool = False,
        with_z: bool = False,
    ) -> list[Sample]:
        """n variations of a poem, all at once (see iter_vary)."""
        draws = self.iter_vary(poem, n, options, spread=spread, allow_unk=allow_unk, with_z=with_z)
        return [s for batch in draws for s in batch]

    def _require_latent(self, what: str) -> None:
        """ConfigError for a model trained without a latent (--no-latent): its encoder is not
        trained and its decoder ignores z, so what z holds of a poem means nothing."""
        if not self.config.model.use_latent:
            where = f" {self.run_dir}" if self.run_dir is not None else ""
            raise ConfigError(f"the model{where} has no latent (trained with --no-latent): it cannot {what}")

    def interpolate(
        self,
        a: PoemLike,
        b: PoemLike,
        *,
        steps: int = 8,
        method: str = "linear",
        options: DecodeOptions = DecodeOptions(greedy=True),
        allow_unk: bool = False,
    ) -> list[Sample]:
        """Decode `steps` points from the posterior mean of a to that of b (both included:
        with greedy options the first and last poems are the reconstructions of a and b,
        see Reconstruction.of); controls apply to every point (e.g. every poem on the path
        rhymes)."""
        self._require_latent("interpolate between poems")
        mu, _ = self.encode([a, b], allow_unk)
        return self.decode(latent_path(mu[0], mu[1], steps, method), options, with_z=True)
