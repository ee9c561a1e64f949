"""The library's front door: a trained model plus its vocabulary, working on poems as text.

    from poetvae import Poet
    poet = Poet.load("runs/default")
    for s in poet.sample(4, temperature=0.8, seed=1):
        print(s.layout())
    path = poet.interpolate("床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                            "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", steps=8)

Everything is rebuilt from the run directory alone (config.json, vocab.json,
model.safetensors): no flag has to be repeated at load time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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


@dataclass
class Sample:
    lines: list[str]  # 4 lines of 5 characters
    logprob: float  # log p(poem | z) under the decoder, nats
    z: list[float] | None = None
    backoff: list[str] = field(default_factory=list)  # controls relaxed to find a candidate

    def layout(self) -> str:
        """Two couplets on two lines: 床前明月光，疑是地上霜。 / 举头望明月，低头思故乡。"""
        a, b, c, d = self.lines
        return f"{a}，{b}。\n{c}，{d}。"

    def oneline(self) -> str:
        return self.layout().replace("\n", "")


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
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()
        else:
            g.manual_seed(seed)
        return g

    def _samples(
        self,
        z: Tensor,
        opts: DecodeOptions,
        generator: torch.Generator,
        with_z: bool,
        controls: Controls | None = None,
        beam: int = 1,
        rerank: int = 1,
        prosody_weight: float = 0.0,
    ) -> list[Sample]:
        """Decode z; with rerank > 1, decode that many candidates per z and keep the one
        with the best log-probability + prosody_weight * prosody_score."""
        ids, logprob, backoff = generate(
            self.model,
            z.repeat_interleave(rerank, dim=0),
            self.vocab,
            opts,
            generator,
            controls,
            beam,
            self.decode_tables,
        )
        if rerank > 1:  # keep the best candidate of each z
            score = logprob
            if prosody_weight:
                scheme = controls.scheme if controls else "pingshui"
                prosody = [prosody_score(self.vocab.decode(row), scheme) for row in ids.tolist()]
                score = score + prosody_weight * torch.tensor(prosody, device=score.device)
            keep = score.view(-1, rerank).argmax(dim=1) + torch.arange(0, ids.size(0), rerank, device=score.device)
            ids, logprob, backoff = ids[keep], logprob[keep], backoff[keep]
        zs = z.tolist() if with_z else [None] * z.size(0)
        return [
            Sample(self.vocab.decode(row), lp, zz, bo)
            for row, lp, zz, bo in zip(ids.tolist(), logprob.tolist(), zs, backoff_report(backoff))
        ]

    # ---- the operations ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, poems: Sequence[PoemLike], allow_unk: bool = False) -> tuple[Tensor, Tensor]:
        """Posterior parameters mu, logvar (B, Z) of q(z|x)."""
        return self.model.encode(self.tokens(poems, allow_unk))

    def decode(
        self,
        z: Tensor,
        opts: DecodeOptions = DecodeOptions(),
        seed: int | None = None,
        with_z: bool = False,
        controls: Controls | None = None,
        beam: int = 1,
        rerank: int = 1,
        prosody_weight: float = 0.0,
    ) -> list[Sample]:
        return self._samples(
            z.to(self.device), opts, self._generator(seed), with_z, controls, beam, rerank, prosody_weight
        )

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
        self,
        n: int,
        opts: DecodeOptions = DecodeOptions(),
        seed: int | None = None,
        batch_size: int = 2048,
        with_z: bool = False,
        controls: Controls | None = None,
        beam: int = 1,
        rerank: int = 1,
        prosody_weight: float = 0.0,
        infer_z: bool = False,
    ) -> Iterator[list[Sample]]:
        """n poems, a batch at a time (for streaming large n). z ~ N(0, I), or with infer_z
        z ~ q(z | the controls' prefix)."""
        g = self._generator(seed)
        if infer_z and controls is not None:
            mu, logvar = self.prefix_posterior(controls)
            std = torch.exp(0.5 * logvar)
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            z = self.model.sample(size, self.device, g)
            if infer_z and controls is not None:
                z = mu + std * z
            yield self._samples(z, opts, g, with_z, controls, beam, rerank, prosody_weight)

    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        with_z: bool = False,
        controls: Controls | None = None,
        beam: int = 1,
        rerank: int = 1,
        prosody_weight: float = 0.0,
        infer_z: bool = False,
    ) -> list[Sample]:
        """n poems. controls: rhyme / tones / acrostic / prefix (poetvae.controls); beam:
        beam-search width; rerank: candidates per z, the best kept by log-probability plus
        prosody_weight x prosody score."""
        opts = DecodeOptions(temperature, top_k, top_p, greedy)
        return [
            s
            for batch in self.iter_sample(
                n,
                opts,
                seed,
                with_z=with_z,
                controls=controls,
                beam=beam,
                rerank=rerank,
                prosody_weight=prosody_weight,
                infer_z=infer_z,
            )
            for s in batch
        ]

    def interpolate(
        self,
        a: PoemLike,
        b: PoemLike,
        steps: int = 8,
        method: str = "linear",
        opts: DecodeOptions = DecodeOptions(greedy=True),
        seed: int | None = None,
        allow_unk: bool = False,
        controls: Controls | None = None,
        beam: int = 1,
    ) -> list[Sample]:
        """Decode `steps` points from the posterior mean of a to that of b (both included);
        controls apply to every point (e.g. every poem on the path rhymes)."""
        mu, _ = self.encode([a, b], allow_unk)
        return self.decode(
            latent_path(mu[0], mu[1], steps, method), opts, seed, with_z=True, controls=controls, beam=beam
        )
