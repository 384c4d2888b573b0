"""`python -m skincls ...` (and `torchrun -m skincls train ...`): the command line."""

from skincls.cli import main

main()
