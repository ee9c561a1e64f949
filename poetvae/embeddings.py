"""word2vec token embeddings (gensim), as a matrix aligned row by row with the vocabulary.

The model's embedding layer starts from these vectors: with ~15k poems, vectors learned
from co-occurrence give the encoder a head start over a random table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from poetvae.files import atomic_path
from poetvae.vocab import PAD, SPECIALS, Vocab


def train_word2vec(
    sentences: Sequence[Sequence[str]],
    vocab: Vocab,
    dim: int,
    epochs: int = 10,
    window: int = 5,
    seed: int = 0,
    save_to: Path | None = None,
) -> torch.Tensor:
    """Skip-gram word2vec over token sentences -> (V, dim) float32 matrix aligned to `vocab`.

    One worker thread: gensim is only reproducible for a fixed seed with a single worker.
    Tokens the vocabulary keeps but word2vec never saw, and the special tokens, get small
    random vectors (seeded); <pad> gets zeros. `save_to` also writes the vectors in the
    word2vec text format, which gensim and most tools read (and which, unlike
    `Word2Vec.save`, involves no pickle).
    """
    from gensim.models import Word2Vec  # heavy import, needed only here

    model = Word2Vec(
        sentences=[list(s) for s in sentences],
        vector_size=dim,
        window=window,
        min_count=1,
        sg=1,
        workers=1,
        seed=seed,
        epochs=epochs,
    )
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 0.1, size=(len(vocab), dim)).astype(np.float32)
    for i, token in enumerate(vocab.tokens):
        if i >= len(SPECIALS) and token in model.wv.key_to_index:
            matrix[i] = model.wv[token]
    matrix[PAD] = 0.0
    if save_to is not None:
        with atomic_path(save_to) as tmp:  # gensim writes to a name: give it a temporary one
            model.wv.save_word2vec_format(str(tmp), binary=False)
    return torch.from_numpy(matrix)
