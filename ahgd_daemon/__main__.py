"""``python -m ahgd_daemon``: the ``ahgd`` command line, without the console script.

``python -m`` puts the working directory first on ``sys.path``, where a folder
named ``state`` or ``pipelines`` (a state directory, a folder of YAML) would be
imported instead of ahgd's own packages.  It is taken out before anything else
is imported; the command puts it back at the end once ahgd's packages are in
(``pipelines.execution.children.working_directory_last``), as in the processes
ahgd starts.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main  # noqa: E402  (after the path is set)

main()
