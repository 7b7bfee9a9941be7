"""Who teaches whom: pairing strategies (per epoch, during distillation) and offline matchers
(pair lists before it), both behind open registries; pair lists on disk; SemBridge's DynM.

Importing this package registers the built-ins.
"""

from cmkd.pairing.base import (
    MATCHERS,
    PAIRINGS,
    Pairing,
    register_matcher,
    register_pairing,
)
from cmkd.pairing.factory import build_pairing, match
from cmkd.pairing.pairs import PairList

__all__ = [
    "MATCHERS",
    "PAIRINGS",
    "PairList",
    "Pairing",
    "build_pairing",
    "match",
    "register_matcher",
    "register_pairing",
]
