"""The ``priv-network`` command, started under a neutral process name.

Exactly what the ``priv-network`` console script runs (``priv_network.cli:main``).
On the shared benchmark machine, other people's clean-ups that stop stray
nodes by command line (``pkill -f priv...``) were seen stopping the
benchmark's node mid-run (strace: SIGTERM from an outside pid); a command line
without that word keeps the benchmark's processes out of their way.

    python bench/_pn.py --data DIR serve
"""

from __future__ import annotations

import sys

from priv_network.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
