"""The load tests' modules import one another as scripts do: from their own folder."""

import sys
from pathlib import Path

LOADTESTS = Path(__file__).parents[2] / "loadtests"
if str(LOADTESTS) not in sys.path:
    sys.path.insert(0, str(LOADTESTS))
