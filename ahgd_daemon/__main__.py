"""``python -m ahgd_daemon``: the ``ahgd`` command line, without the console script."""

from .cli import main

main()
