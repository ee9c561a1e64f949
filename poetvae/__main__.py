"""`python -m poetvae …` (also what `torchrun -m poetvae` runs)."""

from poetvae.cli import main

main()
