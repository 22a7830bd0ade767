"""``python -m sbir_bench`` (what ``torchrun -m sbir_bench run ...`` launches)."""

from .cli import main

main()
