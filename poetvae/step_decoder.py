"""The model's decoder rearranged for generation: one step at a time, for a batch of rows.

`PoetVAE.decode` is the decoder as trained (teacher forcing, dropout, torch.nn.LSTM);
`StepDecoder(model)` computes the same function without dropout (a test keeps the two
equal), rearranged so that what does not depend on a row's state is computed once per
model instead of at every one of the 21 steps. Built from the model's weights, so build a
new one after changing them (poetvae.decode.DecodeTables holds one per loaded model).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from poetvae.form import FORM
from poetvae.model import TONE_CLASSES, PoetVAE

TONE_CLASS_COUNT = len(TONE_CLASSES)


class StepDecoder:
    """The decoder of a model in eval mode, one step for a batch of rows, for generation.

    The first LSTM layer's input gates are W_ih [x ; z] + b with
    x = highway(embedding(prev)) + position(p), which splits into
      token_gates[prev] + position_gates[p] + z_gates(row),
    three tables: (V, 4H) for the whole vocabulary, (21, 4H), and (B, 4H) per z. A step is
    then one lookup and the recurrent matrix products, instead of the highway, the
    embedding and the input product for every row; the cell itself is torch.nn.LSTM's,
    with its gates reordered.

    With the model's form features (PoetVAE.form_features) a step costs no more (B, 4H)
    passes: the previous token's tone folds into token_gates, the tone one line up into
    position_gates, which becomes (21 * 5, 4H) indexed by p * 5 + tone, and line 2's rhyme
    group, fixed for the rest of the poem once written, into the row's z_gates: the caller
    adds rhyme_gates[group] (107, 4H) to them then, once per poem (poetvae.decode), and
    keeps the tones of the characters written.
    """

    @torch.no_grad()
    def __init__(self, model: PoetVAE):
        lstm, embed_dim, hidden_dim = model.decoder.lstm, model.cfg.embed_dim, model.cfg.hidden_dim
        self.layers = lstm.num_layers
        # torch.nn.LSTM stacks its gates as i, f, g, o; as i, f, o, g the three sigmoids are
        # one call on one contiguous slice
        order = torch.cat(
            [
                torch.arange(0, 2 * hidden_dim),
                torch.arange(3 * hidden_dim, 4 * hidden_dim),
                torch.arange(2 * hidden_dim, 3 * hidden_dim),
            ]
        )

        def weight(name: str) -> Tensor:
            return getattr(lstm, name)[order.to(lstm.weight_ih_l0.device)]

        w_x = weight("weight_ih_l0")[:, :embed_dim]
        tokens = torch.arange(model.cfg.vocab_size, device=w_x.device)
        self.form = model.cfg.form_features
        with torch.autocast(w_x.device.type, enabled=False):  # tables in fp32, whoever calls
            x = model.highway(model.embedding(tokens))
            position = model.position.weight
            if self.form:
                x = x + model.prev_tone(model.token_tone)
                # position p and tone class c of the character one line up: row p * 5 + c
                position = (position[:, None] + model.line_tone.weight[None]).flatten(0, 1)
                rhyme_gates = model.rhyme.weight @ w_x.T  # (107, 4H); row 0: no group yet
                self.token_tone, self.token_rhyme = model.token_tone, model.token_rhyme
            self.token_gates = x @ w_x.T  # (V, 4H)
            self.position_gates = position @ w_x.T  # (21, 4H), or (21 * 5, 4H)
        self.w_z = weight("weight_ih_l0")[:, embed_dim:]  # (4H, Z)
        self.z_out = model.decoder.z_out  # the skip connection from z to the output, or None
        self.skip = model.decoder.skip  # which of its projections a step adds
        self.bias_0 = weight("bias_ih_l0") + weight("bias_hh_l0")
        if self.form:  # every row starts without a rhyme group: from there on, the change
            self.bias_0 = self.bias_0 + rhyme_gates[0]
            self.rhyme_gates = rhyme_gates - rhyme_gates[0]
        self.w_hh = [weight(f"weight_hh_l{k}").T.contiguous() for k in range(self.layers)]
        # layers above the first: input products and biases (index k - 1 for layer k)
        self.w_ih = [weight(f"weight_ih_l{k}").T.contiguous() for k in range(1, self.layers)]
        self.bias = [weight(f"bias_ih_l{k}") + weight(f"bias_hh_l{k}") for k in range(1, self.layers)]
        out = model.decoder.out
        self.adaptive = model.decoder.adaptive
        if self.adaptive:  # model.AdaptiveOutput, whose full_log_prob logits() calls
            self.adaptive_out = out
            # logits() gives log-probabilities: the sampler takes them as such (log_probs)
            self.logit_bound = math.inf
        else:
            self.out_w, self.out_b = out.weight.detach().T, out.bias.detach()
            # The LSTM's output lies in (-1, 1), so no logit can exceed this in size.
            self.logit_bound = float((out.weight.detach().abs().sum(dim=1) + self.out_b.abs()).max())

    def z_gates(self, z: Tensor) -> Tensor:
        """(B, Z) -> (B, 4H): the part of the first layer's gates that z fixes for the poem."""
        return torch.addmm(self.bias_0, z, self.w_z.T)

    @torch.no_grad()
    def z_output(self, z: Tensor) -> Tensor | None:
        """(B, Z) -> the skip connection's projection of z (ModelConfig.z_skip), once per
        poem; None without one. skip_term picks each step's share of it."""
        return None if self.z_out is None else self.z_out(z).float()

    def skip_term(self, z_out: Tensor, chars_written: Tensor) -> Tensor:
        """What the skip connection adds to the rows' hidden states (B, H) at this step:
        Decoder.skip at the rows' positions."""
        return self.skip(z_out, chars_written[:, None]).squeeze(1)

    @staticmethod
    def _add_product(x: Tensor, a: Tensor, w: Tensor) -> Tensor:
        """x += a @ w in place: one GEMM accumulating into x (in fp32), or under autocast the
        product in the autocast dtype, then added."""
        if torch.is_autocast_enabled(x.device.type):
            return x.add_(a @ w)
        return x.addmm_(a, w)

    @staticmethod
    def _cell(gates: Tensor, c: Tensor, h_out: Tensor, c_out: Tensor) -> None:
        """The LSTM cell on fp32 gates (B, 4H) as i, f, o, g, overwritten; writes h_out, c_out."""
        h = c.size(1)
        ifo = gates[:, : 3 * h].sigmoid_()
        g = gates[:, 3 * h :].tanh_()
        torch.mul(ifo[:, h : 2 * h], c, out=c_out)
        c_out.addcmul_(ifo[:, :h], g)
        torch.tanh(c_out, out=h_out).mul_(ifo[:, 2 * h :])

    @torch.no_grad()
    def __call__(
        self,
        prev: Tensor,
        chars_written: Tensor,
        z_gates: Tensor,
        state: tuple[Tensor, Tensor],
        line_tone: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """prev (B,) ids, chars_written (B,) characters so far, z_gates (B, 4H), state (h, c)
        each (L, B, H), and with form features the rows' line_tone (B,) and z_gates plus
        rhyme_gates[rhyme], as PoetVAE.form_features gives them -> hidden (B, H) before the
        output layer, new state. Every (B, 4H) pass is memory-bound on the CPU, so the
        gates are built and used in place."""
        h0, c0 = state
        h1, c1 = torch.empty_like(h0, dtype=torch.float), torch.empty_like(c0, dtype=torch.float)
        x = self.token_gates.index_select(0, prev)
        p = chars_written.clamp(max=FORM.chars)
        x += self.position_gates[p * TONE_CLASS_COUNT + line_tone if self.form else p]
        x += z_gates
        self._cell(self._add_product(x, h0[0].to(x.dtype), self.w_hh[0]), c0[0], h1[0], c1[0])
        for k in range(1, self.layers):
            gates = self._add_product(
                torch.addmm(self.bias[k - 1], h1[k - 1], self.w_ih[k - 1]).float(), h0[k].to(h1.dtype), self.w_hh[k]
            )
            self._cell(gates, c0[k], h1[k], c1[k])
        return h1[-1], (h1, c1)

    def logits(self, hidden: Tensor) -> Tensor:
        """(B, H) -> (B, V) in fp32, the output layer: the logits of the linear layer, or the
        log-probabilities of the adaptive softmax (its head and every cluster: what the next
        token may be is decided by masks over the whole vocabulary, so all of it is needed)."""
        hidden = hidden.float()
        if self.adaptive:
            with torch.no_grad():
                return self.adaptive_out.full_log_prob(hidden)
        return torch.addmm(self.out_b, hidden, self.out_w)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """(B, H) -> (B, V) log p(next token) in fp32: `logits`, normalised where the output
        layer does not give log-probabilities already (the adaptive softmax does)."""
        scores = self.logits(hidden)
        return scores if self.adaptive else torch.log_softmax(scores, dim=-1)
