"""The text VAE, top to bottom.

    tokens (B, T) -> embedding -> highway layers -> bidirectional LSTM -> mu, logvar (B, Z)
    z = mu + sigma * eps                                       (reparameterisation)
    decoder: LSTM whose initial state is a function of z and whose every input step is
             [embedding of the previous token ; z] -> hidden (B, T, H) (+ a projection of z,
             with the skip connection ModelConfig.z_skip) -> output layer:
             scores over the vocabulary (B, T, V), either a plain linear layer (logits) or
             an adaptive softmax (log-probabilities, Grave et al. 2017)

Loss per poem: reconstruction cross-entropy summed over tokens + beta * KL(q(z|x) || N(0, I))
summed over latent dims (Bowman et al. 2016, "Generating Sentences from a Continuous Space").
The interface follows PyTorch-VAE: encode / reparameterize / decode / loss, and
sample_prior for z ~ N(0, I). Generation decodes with a faster step-by-step form of the
same decoder, built from this model: poetvae.step_decoder.StepDecoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poetvae.config import ModelConfig
from poetvae.errors import ConfigError
from poetvae.form import FORM
from poetvae.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab

# Form features (ModelConfig.form_features): the tone class of a character as an index
# (names of poetvae.prosody.Tone), 0 for none (a special token, or no character there yet);
# a rhyme group as 1 + its index in prosody.group_names("pingshui"), 0 for none (yet).
TONE_CLASSES = (None, "PING", "ZE", "BOTH", "UNKNOWN")
RHYME_GROUP_COUNT = 106  # the 平水韵's 30 平 and 76 仄 groups
RHYME_END = 2 * FORM.chars_per_line - 1  # character 9, line 2's last: the rhyme line 4 must match


def form_tables(tokens: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(V,) tone class index (TONE_CLASSES) and (V,) rhyme group index (0..106) of each
    token of a char vocabulary, by 平水韵; 0 for the specials (<unk>: tone UNKNOWN, no group).

    A character in several groups (多音, e.g. 看 寒/翰) gets the first in the traditional
    order, which lists the 30 平 groups before the 仄 ones: a regular 五绝 rhymes on 平, so
    that is the reading its line 2 most likely rhymes on. Deterministic, whatever the
    order of a frozenset.
    """
    # imported here: a model without form features (and training) needs no prosody
    from poetvae.prosody import group_names, token_rhyme_groups, token_tones

    names = group_names("pingshui")
    assert len(names) == RHYME_GROUP_COUNT
    order = {g: k + 1 for k, g in enumerate(names)}
    tone, rhyme = torch.zeros(len(tokens), dtype=torch.long), torch.zeros(len(tokens), dtype=torch.long)
    tone[UNK] = TONE_CLASSES.index("UNKNOWN")
    real = list(tokens[len(SPECIALS) :])
    groups = token_rhyme_groups(real)
    for i, (t, tones) in enumerate(zip(real, token_tones(real)), start=len(SPECIALS)):
        tone[i] = TONE_CLASSES.index(tones[-1].name) if tones else 0
        rhyme[i] = min((order[g] for g in groups[t]), default=0)
    return tone, rhyme


class Highway(nn.Module):
    """y = g * relu(W x) + (1 - g) * x with a learned gate g (Srivastava et al. 2015)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.transform = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.gate = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        for g in self.gate:
            nn.init.constant_(g.bias, -1.0)  # start close to the identity: carry the embedding through

    def forward(self, x: Tensor) -> Tensor:
        for transform, gate in zip(self.transform, self.gate):
            g = torch.sigmoid(gate(x))
            x = g * F.relu(transform(x)) + (1 - g) * x
        return x


def encoder_hidden_dim(cfg: ModelConfig) -> int:
    """The encoder's LSTM size per direction: its own setting, else the decoder's."""
    return cfg.encoder_hidden_dim or cfg.hidden_dim


class Encoder(nn.Module):
    """Bidirectional LSTM over the whole poem -> the parameters of q(z|x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = encoder_hidden_dim(cfg)
        self.lstm = nn.LSTM(cfg.embed_dim, hidden, cfg.encoder_layers, batch_first=True, bidirectional=True)
        self.to_mu = nn.Linear(2 * hidden, cfg.latent_dim)
        self.to_logvar = nn.Linear(2 * hidden, cfg.latent_dim)
        # BN-VAE (Zhu et al. 2020): with mu batch-normalised to a fixed scale gamma, each
        # dim's mean of mu^2 over poems is gamma^2 + bias^2, so the expected KL of a dim can
        # never fall below gamma^2 / 2: the posterior cannot collapse onto the prior.
        self.bn_gamma = cfg.bn_gamma
        if cfg.bn_gamma > 0:
            self.mu_norm = nn.BatchNorm1d(cfg.latent_dim, affine=False)
            self.mu_bias = nn.Parameter(torch.zeros(cfg.latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, (h, _) = self.lstm(x)  # h: (layers * 2, B, H)
        h = torch.cat([h[-2], h[-1]], dim=-1)  # last layer, forward and backward: (B, 2H)
        mu = self.to_mu(h)
        if self.bn_gamma > 0:
            mu = self.bn_gamma * self.mu_norm(mu) + self.mu_bias
        return mu, self.to_logvar(h)


def adaptive_cutoffs(vocab_size: int, head: int) -> list[int]:
    """The cluster boundaries of the adaptive softmax for a vocabulary of `vocab_size` ids in
    order of frequency (poetvae.vocab builds them so): the `head` most frequent ids, then
    clusters of doubling size, head * 2^k, up to the vocabulary's end. A vocabulary no larger
    than the head is split in half, so that the layer is always a head and a cluster."""
    cutoffs, c = [], head
    while c < vocab_size - 1:
        cutoffs.append(c)
        c *= 2
    return cutoffs or [max(1, (vocab_size - 1) // 2)]


class AdaptiveOutput(nn.AdaptiveLogSoftmaxWithLoss):
    """The adaptive softmax (Grave et al. 2017): p(token | h) in two factors. A head over the
    frequent ids plus one entry per cluster of rare ones, and within a cluster a softmax
    computed from h projected down to H / div^(i+1) dims. The distribution is exact and
    normalised, so likelihoods, perplexities and scores stay what they were; what it saves
    is the full (N, H) x (H, V) product in training: a character that is not in the head
    costs only its own cluster, and 92% of the characters of Tang and Song verse are among
    the 2,000 most frequent.

    torch's module holds the parameters and its own `log_prob`; the two computations here
    run the softmaxes in fp32 whatever the autocast dtype of h (losses stay in fp32), and
    `nll` takes rows of one cluster together, as the module's forward does."""

    def __init__(self, hidden_dim: int, vocab_size: int, head: int, div_value: float):
        super().__init__(hidden_dim, vocab_size, adaptive_cutoffs(vocab_size, head), div_value, head_bias=True)

    def full_log_prob(self, hidden: Tensor) -> Tensor:
        """(N, H) -> log p of every id (N, V), in fp32. Without autograd (decoding, where this
        runs at every step) each part is written into one (N, V) buffer; with it, the parts
        are concatenated, one pass more."""
        s = self.shortlist_size
        head = self.head(hidden).float().log_softmax(dim=-1)  # (N, shortlist + clusters)
        clusters = [self.tail[i](hidden).float().log_softmax(dim=-1) for i in range(self.n_clusters)]
        if torch.is_grad_enabled():
            return torch.cat([head[:, :s]] + [c + head[:, s + i, None] for i, c in enumerate(clusters)], dim=1)
        out = hidden.new_empty((hidden.size(0), self.n_classes), dtype=torch.float)
        out[:, :s] = head[:, :s]
        for i, c in enumerate(clusters):
            torch.add(c, head[:, s + i, None], out=out[:, self.cutoffs[i] : self.cutoffs[i + 1]])
        return out

    def nll(self, hidden: Tensor, target: Tensor) -> Tensor:
        """(N, H), (N,) ids -> -log p(target) (N,) in fp32, 0 for <pad>. Every row has one
        target in the head (its id, or its cluster's entry) and rows of a cluster one more
        inside it, so the loss is one cross-entropy over the head and one per cluster, on
        the rows whose target is there."""
        cluster_of = torch.bucketize(target, target.new_tensor(self.cutoffs), right=True)  # 0: head
        head_target = torch.where(cluster_of == 0, target, self.shortlist_size - 1 + cluster_of)
        nll = F.cross_entropy(self.head(hidden).float(), head_target, ignore_index=PAD, reduction="none")
        for i, lo in enumerate(self.cutoffs[:-1]):
            rows = (cluster_of == i + 1).nonzero().squeeze(1)
            if rows.numel():
                inside = F.cross_entropy(self.tail[i](hidden[rows]).float(), target[rows] - lo, reduction="none")
                nll = nll.index_add(0, rows, inside)
        return nll


class Decoder(nn.Module):
    """LSTM language model conditioned on z twice: in its initial state and at every step.

    Feeding z at every step (not only as the initial state) keeps the latent within
    reach of the output for all 21 steps, one of the cures for posterior collapse.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers, self.hidden_dim = cfg.decoder_layers, cfg.hidden_dim
        self.lstm = nn.LSTM(cfg.embed_dim + cfg.latent_dim, cfg.hidden_dim, cfg.decoder_layers, batch_first=True)
        self.init_state = nn.Linear(cfg.latent_dim, 2 * cfg.decoder_layers * cfg.hidden_dim)
        self.drop = nn.Dropout(cfg.dropout)
        # The skip connection from z (ModelConfig.z_skip; Dieng et al. 2019, "Avoiding
        # Latent Variable Collapse with Generative Skip Models"): z shifts every step's output
        # directly, so what the decoder writes depends on z however little its LSTM state
        # keeps of it. Zero at the start: a model fine-tuned from one without it (train
        # --init) begins as that model.
        # "position" gives each character position its own projection: z can then say what
        # goes where directly (the issue-20 latent model), not only what the poem is about.
        skip_positions = {"none": 0, "shared": 1, "position": FORM.chars + 1}[cfg.z_skip]
        self.skip_positions = skip_positions
        self.z_out = nn.Linear(cfg.latent_dim, skip_positions * cfg.hidden_dim) if skip_positions else None
        if self.z_out is not None:
            nn.init.zeros_(self.z_out.weight)
            nn.init.zeros_(self.z_out.bias)
        self.adaptive = cfg.output_layer == "adaptive"
        if self.adaptive:
            self.out = AdaptiveOutput(cfg.hidden_dim, cfg.vocab_size, cfg.adaptive_head, cfg.adaptive_div)
        else:
            self.out = nn.Linear(cfg.hidden_dim, cfg.vocab_size)

    def initial_state(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h_and_c = torch.tanh(self.init_state(z))  # (B, 2 * L * H)
        h, c = h_and_c.view(z.size(0), 2, self.layers, self.hidden_dim).permute(1, 2, 0, 3).contiguous()
        return h, c  # each (L, B, H)

    def forward(
        self, x: Tensor, z: Tensor, state: tuple[Tensor, Tensor], positions: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: embedded inputs (B, T, E); z: (B, Z); positions (B, T): characters written
        before each step (needed by z_skip "position"). Returns the hidden states (B, T, H)
        that the output layer reads (after dropout) and the new state.

        The same call serves teacher forcing (T = 21) and generation (T = 1, step by step).
        """
        zs = z.unsqueeze(1).expand(-1, x.size(1), -1)
        h, state = self.lstm(torch.cat([x, zs], dim=-1), state)
        if self.z_out is not None:
            h = h + self.skip(self.z_out(z), positions).to(h.dtype)
        return self.drop(h), state

    def skip(self, projected: Tensor, positions: Tensor | None) -> Tensor:
        """z_out(z) (B, P * H) -> what the skip connection adds at each step: (B, 1, H) for
        the shared projection, (B, T, H) picked by position for one per position."""
        if self.skip_positions == 1:
            return projected.unsqueeze(1)
        if positions is None:
            raise ValueError('z_skip "position" needs the positions of the steps')
        table = projected.view(projected.size(0), self.skip_positions, self.hidden_dim)
        index = positions.clamp(max=self.skip_positions - 1).unsqueeze(-1).expand(-1, -1, self.hidden_dim)
        return table.gather(1, index)

    def scores(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., V) scores whose log_softmax is log p(next token): the logits of
        the linear layer, or the log-probabilities themselves (fp32) of the adaptive one."""
        if self.adaptive:
            return self.out.full_log_prob(hidden.reshape(-1, hidden.size(-1))).view(*hidden.shape[:-1], -1)
        return self.out(hidden)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden (..., H) and the next tokens (...) -> -log p(token) (...) in fp32, 0 at
        <pad>. Only the adaptive layer's clusters that some target falls in are computed."""
        h, t = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
        if self.adaptive:
            nll = self.out.nll(h, t)
        else:
            nll = F.cross_entropy(self.out(h).float(), t, ignore_index=PAD, reduction="none")
        return nll.view(targets.shape)


class PoetVAE(nn.Module):
    """Token embedding and highway layers shared by an Encoder and a Decoder, plus the
    position embedding the decoder reads (which character of the poem comes next)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= len(SPECIALS):
            raise ValueError("ModelConfig.vocab_size must be set from the vocabulary")
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)
        # The decoder is told which character of the poem it writes next (0..19, 20 for the
        # end): line breaks, rhyme positions and the tonal pattern all hang on it, and an
        # LSTM that has to count to find them learns the form much more slowly.
        self.position = nn.Embedding(FORM.chars + 1, cfg.embed_dim)
        nn.init.normal_(self.position.weight, std=0.2)  # the scale of the word2vec vectors (~0.18)
        # Characters each token spans (1 for a character, more for a jieba word, 0 for the
        # specials); set from the vocabulary before training and saved with the weights.
        chars = torch.ones(cfg.vocab_size, dtype=torch.long)
        chars[[PAD, BOS, EOS]] = 0
        self.register_buffer("token_chars", chars)
        if cfg.form_features:
            # Facts about the prefix that the form hangs on (see form_features): the 平仄 of
            # the previous character, of the character 5 back (the same place in the previous
            # line, what 粘/对 compare), and line 2's rhyme group once it is written. Lookup
            # tables set from the vocabulary like token_chars, and saved with the weights;
            # without the setting none of this exists, so older runs load as they were.
            self.register_buffer("token_tone", torch.zeros(cfg.vocab_size, dtype=torch.long))
            self.register_buffer("token_rhyme", torch.zeros(cfg.vocab_size, dtype=torch.long))
            self.prev_tone = nn.Embedding(len(TONE_CLASSES), cfg.embed_dim)
            self.line_tone = nn.Embedding(len(TONE_CLASSES), cfg.embed_dim)
            self.rhyme = nn.Embedding(RHYME_GROUP_COUNT + 1, cfg.embed_dim)
            for table in (self.prev_tone, self.line_tone, self.rhyme):
                nn.init.normal_(table.weight, std=0.2)  # as the position embedding
        self.highway = Highway(cfg.embed_dim, cfg.highway_layers)
        self.embed_drop = nn.Dropout(cfg.dropout)
        # The --no-latent baseline keeps the same decoder, fed z = 0, and has no encoder.
        self.encoder = Encoder(cfg) if cfg.use_latent else None
        self.decoder = Decoder(cfg)

    def use_vocab(self, vocab: Vocab) -> None:
        """Set the tables that come from the vocabulary (token_chars, and the form
        features' lookups when the model has them); done once, before training."""
        with torch.no_grad():
            self.token_chars.copy_(vocab.token_chars())
            if self.cfg.form_features:
                if vocab.tokenizer != "char":
                    raise ConfigError("model.form_features needs a char vocabulary, not " + vocab.tokenizer)
                tone, rhyme = form_tables(vocab.tokens)
                self.token_tone.copy_(tone)
                self.token_rhyme.copy_(rhyme)

    def form_features(self, inputs: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids starting at <bos> and their positions -> the two per-row features of
        each step, (B, T) each: the tone class (TONE_CLASSES) of the character at the same
        place in the previous line, and line 2's rhyme group (see form_tables), 0 while there
        is none. Step t reads only inputs[:, :t + 1]: character j is inputs[:, j + 1]."""
        t = inputs.size(1)
        back = positions - FORM.chars_per_line  # the character at the same place one line up
        line_tone = self.token_tone[inputs].gather(1, (back + 1).clamp(0, t - 1))
        line_tone = torch.where(back >= 0, line_tone, 0)
        end = inputs[:, min(RHYME_END + 1, t - 1)]  # the rhyme character, when it is there
        rhyme = torch.where(positions > RHYME_END, self.token_rhyme[end][:, None], 0)
        return line_tone, rhyme

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, E); shared by encoder and decoder."""
        return self.highway(self.embed_drop(self.embedding(tokens)))

    # ---- the VAE interface ---------------------------------------------------------------
    def encode(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, T) -> mu, logvar, each (B, Z)."""
        if self.encoder is None:
            zeros = tokens.new_zeros(tokens.size(0), self.cfg.latent_dim, dtype=torch.float)
            return zeros, zeros
        return self.encoder(self.embed(tokens))

    def reparameterize(
        self, mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None, eps: Tensor | None = None
    ) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) drawn here unless given."""
        if self.encoder is None:
            return mu
        if eps is None:
            eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(
        self,
        z: Tensor,
        inputs: Tensor,
        state: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        features: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Teacher-forced or stepwise decoding -> scores over the vocabulary (B, T, V)
        (Decoder.scores: their log_softmax is log p) and the new state. inputs: (B, T) ids
        of the previous tokens, starting with <bos> unless `state` continues a decode.
        positions (B, T): characters written before each step; and with form_features,
        `features`, the pair of (B, T) from form_features: both computed from `inputs` when
        they start at <bos>, and required when decoding step by step."""
        hidden, state = self.decode_hidden(z, inputs, state, positions, features)
        return self.decoder.scores(hidden), state

    def decode_hidden(
        self,
        z: Tensor,
        inputs: Tensor,
        state: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        features: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`decode` up to the output layer: the hidden states (B, T, H) and the new state.
        Training and the likelihoods stop here and take Decoder.nll of the targets, which
        for the adaptive softmax never builds the (B, T, V) distribution."""
        if state is None:
            state = self.decoder.initial_state(z)
        if positions is None:
            positions = self.token_chars[inputs].cumsum(dim=1)  # <bos> spans 0 characters
        x = self.embed(inputs) + self.position(positions.clamp(max=FORM.chars))
        if self.cfg.form_features:
            line_tone, rhyme = features if features is not None else self.form_features(inputs, positions)
            x = x + self.prev_tone(self.token_tone[inputs]) + self.line_tone(line_tone) + self.rhyme(rhyme)
        return self.decoder(x, z, state, positions)

    @staticmethod
    def teacher_inputs(tokens: Tensor) -> Tensor:
        """<bos> followed by the poem shifted right: what the decoder reads while writing `tokens`."""
        return torch.cat([tokens.new_full((tokens.size(0), 1), BOS), tokens[:, :-1]], dim=1)

    def sample_prior(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """n latent codes from the prior, z ~ N(0, I): (n, Z). (Poems come from decoding them.)"""
        return torch.randn(n, self.cfg.latent_dim, device=device, generator=generator)

    def forward(
        self,
        tokens: Tensor,
        word_dropout: float = 0.0,
        eps: Tensor | None = None,
        drop: Tensor | None = None,
        encoder_drop: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """tokens (B, T) rows of `Vocab.encode_batch`: the poem, <eos>, <pad>.

        eps (B, Z) and the bool masks drop and encoder_drop (B, T) may be given to fix the
        noise of z = mu + sigma*eps, of word dropout, and of the encoder's input noise
        (multi-process training draws them for the whole global batch). Masks apply in
        training mode only.
        """
        encoder_tokens = tokens
        if self.training and encoder_drop is not None:
            # Input noise on the encoder (Shen et al. 2020, DAAE): poems that differ in a few
            # characters must map close together, which smooths the latent space that
            # interpolation and variations walk through. The decoder still reconstructs the
            # whole poem.
            encoder_tokens = tokens.masked_fill(encoder_drop & (tokens > EOS), UNK)
        mu, logvar = self.encode(encoder_tokens)
        z = self.reparameterize(mu, logvar, eps=eps)
        inputs = self.teacher_inputs(tokens)
        if self.training and (word_dropout > 0 or drop is not None):
            # Word dropout (Bowman et al. 2016): hide some previous tokens from the decoder
            # so that it has to lean on z; <bos> and padding are never replaced.
            if drop is None:
                drop = torch.rand(inputs.shape, device=inputs.device) < word_dropout
            drop = drop.clone()
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop & (inputs != PAD), UNK)
        hidden, _ = self.decode_hidden(z, inputs)
        return {"hidden": hidden, "mu": mu, "logvar": logvar, "z": z}

    def nll_given_z(self, z: Tensor, tokens: Tensor) -> Tensor:
        """-log p(x|z) per poem (B,) in fp32 (nats): the poem's tokens and <eos>, <pad> ignored.
        Without dropout in eval mode; the same term `loss` minimises."""
        hidden, _ = self.decode_hidden(z, self.teacher_inputs(tokens))
        return self.decoder.nll(hidden, tokens).sum(dim=1)

    @staticmethod
    def reconstruction_loss(tokens: Tensor, logits: Tensor) -> Tensor:
        """-log p(x|z) per poem (B,) from full scores (B, T, V) such as `decode` gives:
        the cross-entropy summed over the poem's tokens and <eos>, <pad> ignored (nats)."""
        b, t, v = logits.shape
        ce = F.cross_entropy(
            logits.reshape(b * t, v).float(), tokens.reshape(b * t), ignore_index=PAD, reduction="none"
        )
        return ce.view(b, t).sum(dim=1)

    def loss(
        self,
        tokens: Tensor,
        out: dict[str, Tensor],
        beta: float = 1.0,
        free_bits: float = 0.0,
        batch_mean: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Per-poem terms and the scalar objective.

        rec (B): -log p(x|z), the cross-entropy summed over the poem's tokens and <eos> (nats).
        kl  (B): KL(N(mu, sigma^2) || N(0, I)) in closed form, summed over dims (nats).
        loss: mean(rec) + beta * KL term, where with free bits (Kingma et al. 2016) each
              dim's batch-mean KL counts as at least `free_bits` nats, so the optimiser gains
              nothing by pushing a dim's KL below the floor. `batch_mean` turns the local
              per-dim mean into the global batch's in multi-process training.
        """
        mu, logvar = out["mu"], out["logvar"]
        rec = self.decoder.nll(out["hidden"], tokens).sum(dim=1)
        kl_dims = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())  # (B, Z)
        kl = kl_dims.sum(dim=1)
        if self.encoder is None:
            kl_term = kl.new_zeros(())
        elif free_bits > 0:
            per_dim = kl_dims.mean(dim=0)
            if batch_mean is not None:
                per_dim = batch_mean(per_dim)
            kl_term = torch.clamp(per_dim, min=free_bits).sum()
        else:
            kl_term = kl.mean()
        return {"loss": rec.mean() + beta * kl_term, "rec": rec, "kl": kl}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
