"""The library's front door: a trained model plus its vocabulary, working on poems as text.

    from poetvae import Poet
    from poetvae.decode import DecodeOptions
    poet = Poet.load("runs/quatrains")
    for s in poet.sample(4, DecodeOptions(temperature=0.8, seed=1)):
        print(s.layout())
    path = poet.interpolate("床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                            "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", steps=8)

Everything is rebuilt from the run directory alone (config.json, vocab.json,
model.safetensors): no flag has to be repeated at load time, and a bundle (the minimal
directory `poetvae export` writes, float16 weights included) loads like a run.
poetvae.models.resolve_model(None).path is the model the commands use without -m.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from poetvae.config import Config
from poetvae.controls import Controls, backoff_report
from poetvae.decode import DecodeOptions, DecodeTables, generate, latent_path
from poetvae.errors import CheckpointError
from poetvae.form import Poem, parse_poem
from poetvae.hardware import keep_freed_memory, resolve_device
from poetvae.model import PoetVAE
from poetvae.prosody import prosody_score
from poetvae.rundir import RunDir
from poetvae.vocab import Vocab

PoemLike = str | Poem | Sequence[str]


@dataclass(frozen=True)
class Sample(Poem):
    """A decoded poem (lines; no title or author) with what decoding knows about it."""

    logprob: float = 0.0  # log p(poem | z) under the decoder, nats
    z: tuple[float, ...] | None = None  # the latent code it was decoded from, when asked for
    backoff: tuple[str, ...] = ()  # controls relaxed to find a candidate


class Poet:
    def __init__(self, model: PoetVAE, vocab: Vocab, config: Config, device: torch.device):
        self.model, self.vocab, self.config, self.device = model.eval(), vocab, config, device

    @functools.cached_property
    def decode_tables(self) -> DecodeTables:
        """The decoder's vocabulary-sized tables, built at the first decode and then reused
        (the weights of a Poet do not change)."""
        return DecodeTables(self.model, self.vocab, self.device)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", weights: str = "best") -> Poet:
        """weights: "best" (model.safetensors, lowest validation -ELBO) or "last"."""
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
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f"{run_dir}: the weights do not fit the config ({str(e).splitlines()[0]})") from None
        return cls(model.to(dev), vocab, config, dev)

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

    def _samples(self, z: Tensor, options: DecodeOptions, generator: torch.Generator, *, with_z: bool) -> list[Sample]:
        """Decode z; with options.rerank > 1, decode that many candidates per z and keep the
        one with the best log-probability + prosody_weight * prosody_score."""
        rerank = options.rerank
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
        self.vocab.require_known(controls.prefix)
        with torch.no_grad():
            return self.model.encode(self.vocab.encode_batch([controls.prefix]).to(self.device))

    def iter_sample(
        self, n: int, options: DecodeOptions = DecodeOptions(), *, with_z: bool = False
    ) -> Iterator[list[Sample]]:
        """n poems, options.batch_size at a time (for streaming large n). z ~ N(0, I), or
        with options.infer_z z ~ q(z | the controls' prefix); seed fixes z and the draws."""
        generator = self._generator(options.seed)
        infer_z = options.infer_z and options.controls is not None
        if infer_z:
            mu, logvar = self.prefix_posterior(options.controls)
            std = torch.exp(0.5 * logvar)
        for start in range(0, n, options.batch_size):
            size = min(options.batch_size, n - start)
            z = self.model.sample_prior(size, self.device, generator)
            if infer_z:
                z = mu + std * z
            yield self._samples(z, options, generator, with_z=with_z)

    def sample(self, n: int, options: DecodeOptions = DecodeOptions(), *, with_z: bool = False) -> list[Sample]:
        """n poems, all at once (see iter_sample). options: temperature, top-k/p, greedy;
        controls (rhyme / tones / acrostic / prefix, poetvae.controls); beam: beam-search
        width; rerank: candidates per z, the best kept by log-probability plus
        prosody_weight x prosody score; seed."""
        return [s for batch in self.iter_sample(n, options, with_z=with_z) for s in batch]

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
        """Decode `steps` points from the posterior mean of a to that of b (both included);
        controls apply to every point (e.g. every poem on the path rhymes)."""
        mu, _ = self.encode([a, b], allow_unk)
        return self.decode(latent_path(mu[0], mu[1], steps, method), options, with_z=True)
