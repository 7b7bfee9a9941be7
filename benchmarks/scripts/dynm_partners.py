"""Which teacher samples DynM pairs the students with, on the SemBridge ablation's runs.

For every run of a pairing row it reads the run's final pair list (`pairs.json`, what
`cmkd pairs show` reads) and reports, as means over seeds: distinct teacher partners per
student (distinct teacher samples / pairs; 100 % when no two students share one), the most
students one teacher sample serves, and, on the strong-teacher scenario (one teacher for
every seed), the teacher's entropy at the KD temperature (T = 3) on the partners and how often
its top class is the partner's label. Reads the local grid store; trains nothing.

    python benchmarks/scripts/dynm_partners.py [runs/bench/sembridge-ablation]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from statistics import mean

import numpy as np
import torch

ROWS = [
    "KD, class-random pairs",
    "KD, matched pairs",
    "KD, matched + DynM",
    "KD, matched + DynM from epoch 10",
    "KD + SemBridge (matched + DynM + SKA)",
]
STRONG = "eurosat_rgb_full_to_ms"
TEMPERATURE = 3.0


def _teacher_outputs(root: Path):
    """id -> (entropy at T, top class) of the strong scenario's teacher on its training bank."""
    from cmkd.bench.scenarios import SCENARIOS
    from cmkd.data.datamodule import prepare_data
    from cmkd.recipes import load_model

    rows = prepare_data(SCENARIOS[STRONG].teacher_data, 0).rows("rgb", "train")
    model, _ = load_model(
        root / "runs" / STRONG / "teacher-small_cnn/teacher/seed0/checkpoints/best.ckpt"
    )
    model.eval()
    where = {i: k for k, i in enumerate(rows.ids)}
    seen: dict[str, tuple[float, int]] = {}

    def lookup(ids: list[str]) -> list[tuple[float, int]]:
        new = sorted(set(ids) - set(seen))
        if new:
            x = torch.as_tensor(np.stack([rows.x[where[i]] for i in new])).float()
            with torch.no_grad():
                z = model(x).logits / TEMPERATURE
            p = z.softmax(-1)
            h = -(p * p.clamp_min(1e-12).log()).sum(-1)
            seen.update(zip(new, zip(h.tolist(), z.argmax(-1).tolist(), strict=True), strict=True))
        return [seen[i] for i in ids]

    return lookup


def main(root: Path) -> None:
    from cmkd.bench.store import slug

    torch.set_num_threads(1)
    teacher = _teacher_outputs(root)
    for scenario in sorted(p.name for p in (root / "runs").iterdir()):
        print(f"\n{scenario}")
        for row in ROWS:
            lists = sorted((root / "runs" / scenario / "s-s" / slug(row)).glob("seed*/pairs.json"))
            if not lists:
                continue
            own, most, entropy, right = [], [], [], []
            for path in lists:
                pairs = json.loads(path.read_text())
                ids = pairs["teacher_ids"]
                own.append(len(set(ids)) / len(ids))
                most.append(Counter(ids).most_common(1)[0][1])
                if scenario == STRONG:
                    out = teacher(ids)
                    entropy.append(mean(h for h, _ in out))
                    right.append(
                        mean(a == y for (_, a), y in zip(out, pairs["teacher_labels"], strict=True))
                    )
            line = (
                f"  {row:40s} seeds {len(lists):2d}  distinct partners {100 * mean(own):5.1f} %"
                f"  most served {mean(most):5.1f}"
            )
            if entropy:
                line += (
                    f"  teacher entropy (T = 3) {mean(entropy):.2f} nats"
                    f"  teacher right {100 * mean(right):5.1f} %"
                )
            print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/sembridge-ablation"))
