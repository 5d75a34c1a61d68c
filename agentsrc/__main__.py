"""``python -m agentsrc``: the same as the ``meshd-agent`` command."""

import sys

from agentsrc.main import main

sys.exit(main())
