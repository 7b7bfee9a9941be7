"""Random streams fixed by (seed, role), independent of anything built before them.

A paired comparison "method - no KD over seeds" only cancels noise if, for one seed, every
method's student starts from the same weights and sees the same data order. Building a teacher,
a loss adapter or a matcher first must therefore not move the student's initialisation: each
role draws from its own generator state, derived from (seed, role), inside `seeded`, which
restores the global state afterwards.

Roles used by cmkd: "network" (the trained network of `train` and `distill`), "term:<name>"
(a distillation term's adapters and projections), "fit" (dropout and augmentation during
training), "matcher" / "matcher-fit" (SSM), "discomkd:<modality>" (a DisCoM-KD student) and
"discomkd:heads" (its training-only heads).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_for(seed: int, role: str) -> int:
    """A 31-bit seed derived from (seed, role): equal inputs, equal streams; different roles,
    unrelated streams."""
    digest = hashlib.sha256(f"cmkd:{int(seed)}:{role}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@contextmanager
def seeded(seed: int, role: str) -> Iterator[None]:
    """Run the block with torch's, numpy's and Python's global generators seeded from
    (seed, role), then put every generator back as it was (CUDA's too where initialised)."""
    value = seed_for(seed, role)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
