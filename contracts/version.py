"""The major version of scoregate's public contract.

The schemas of that version, as released, live in ``contracts/released/<version>/``;
the current schemas are judged against them by :mod:`contracts.compatibility`. A
change that breaks the contract needs ``CONTRACT_VERSION`` raised by one and a new
baseline cut with ``python -m contracts.schemas --release``.
"""

from __future__ import annotations

CONTRACT_VERSION = 2
