"""``python -m mpiland``: the same as the ``mpiland`` command."""

from .cli import main

main()
