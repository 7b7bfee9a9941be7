"""Golden values: every registered term at its default parameters on fixed, seeded inputs,
against a number computed once, outside this repository, from an independent reference.

`golden_values.json` holds, per case, the value and a `reference` string saying where it came
from: the authors' code run on these inputs (mdistiller, RepDistiller, the LSKD, CTKD and DIST
authors' repositories, at the commits named there) or, where no code is public or cmkd departs
from it on purpose, a numpy re-derivation of the term's documented formula (terms with
learnable adapters: from the adapter's weights at the seeded init, read from the term).
Nothing here regenerates those numbers from cmkd, so a changed default, a changed formula or a
changed adapter initialisation fails; if such a change is meant, recompute the number from the
reference and say so in the commit.

Everything runs in float64 (the term is cast with `.double()` after its seeded build), so the
comparison can be tight.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cmkd.losses import LOSSES, TermContext, build_term
from cmkd.models.outputs import ModelOutput

GOLDEN = json.loads(Path(__file__).with_name("golden_values.json").read_text())
CASES = GOLDEN["cases"]
SETUP = GOLDEN["setup"]
RTOL, ATOL = 1e-5, 1e-9


def make_inputs() -> dict[str, torch.Tensor]:
    """The recipe in golden_values.json's `setup.inputs`: one generator, this order."""
    b, k = SETUP["batch"], SETUP["classes"]
    (ds, cs, hs), (dt, ct, ht) = (
        (SETUP[side]["embedding_dim"], SETUP[side]["feature_channels"], SETUP[side]["map_size"])
        for side in ("student", "teacher")
    )
    g = torch.Generator().manual_seed(SETUP["seed"])

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    t_emb = r(b, dt)
    t_w = 0.5 * r(k, dt)
    t_b = 0.1 * r(k)
    t_logits = t_emb @ t_w.T + t_b
    t_map = r(b, ct, ht, ht)
    s_logits = 0.2 * t_logits + 1.5 * r(b, k)
    s_emb = r(b, ds)
    s_map = r(b, cs, hs, hs)
    label = torch.randint(0, k, (b,), generator=g)
    return {
        "t_emb": t_emb,
        "t_w": t_w,
        "t_b": t_b,
        "t_logits": t_logits,
        "t_map": t_map,
        "s_logits": s_logits,
        "s_emb": s_emb,
        "s_map": s_map,
        "label": label,
        "index": torch.arange(b),
    }


class StubNetwork(nn.Module):
    """What `from_networks` reads from a cmkd Network: widths and the linear classifier."""

    def __init__(self, name: str, channels: int, embedding_dim: int, classes: int) -> None:
        super().__init__()
        self.name, self.feature_channels, self.num_classes = name, channels, classes
        self.embedding_dim = embedding_dim
        self.classifier = nn.Linear(embedding_dim, classes, dtype=torch.float64)


def build(name: str, params: dict, x: dict[str, torch.Tensor]):
    """The term as the golden numbers were made: networks first, then torch.manual_seed right
    before the build (adapters' init), cast to float64, at the recorded epoch."""
    student, teacher = (
        StubNetwork(
            side,
            SETUP[side]["feature_channels"],
            SETUP[side]["embedding_dim"],
            SETUP["classes"],
        )
        for side in ("student", "teacher")
    )
    with torch.no_grad():
        teacher.classifier.weight.copy_(x["t_w"])
        teacher.classifier.bias.copy_(x["t_b"])
    torch.manual_seed(SETUP["build_seed"])
    context = TermContext(num_train=SETUP["batch"], max_epochs=SETUP["max_epochs"])
    term = build_term(name, student, teacher, context, **params).double()
    term.on_epoch_start(SETUP["epoch"], SETUP["max_epochs"])
    return term


def outputs(x: dict[str, torch.Tensor]) -> tuple[ModelOutput, ModelOutput, dict]:
    student = ModelOutput(x["s_logits"].clone(), x["s_emb"].clone(), x["s_map"].clone())
    teacher = ModelOutput(x["t_logits"], x["t_emb"], x["t_map"])
    return student, teacher, {"label": x["label"], "index": x["index"]}


def test_every_registered_term_has_a_golden_value_at_its_defaults() -> None:
    at_defaults = {c["name"] for c in CASES.values() if not c["params"]}
    assert at_defaults == set(LOSSES)
    assert all(c["reference"] for c in CASES.values())


def test_inputs_are_the_recorded_ones() -> None:
    # Guards the recipe (and torch's generator): a mismatch here is not a loss change.
    x = make_inputs()
    for key, want in SETUP["inputs"]["checksums"].items():
        assert x[key].double().sum().item() == pytest.approx(want, rel=1e-12), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_value(case: str) -> None:
    spec = CASES[case]
    x = make_inputs()
    term = build(spec["name"], spec["params"], x)
    student, teacher, batch = outputs(x)
    value = term(student, teacher, batch)
    want = spec["value"]
    if isinstance(want, dict):
        assert isinstance(value, dict) and set(value) == set(want), case
        got = {k: v.item() for k, v in value.items()}
    else:
        assert torch.is_tensor(value) and value.ndim == 0, case
        got = value.item()
    for key in want if isinstance(want, dict) else [None]:
        g, w = (got, want) if key is None else (got[key], want[key])
        assert math.isclose(g, w, rel_tol=RTOL, abs_tol=ATOL), f"{case} {key}: {g!r} != {w!r}"
    if "grad" in spec:  # a schedule that acts on the backward pass only (CTKD's reversal)
        total = sum(value.values()) if isinstance(value, dict) else value
        total.backward()
        for pname, w in spec["grad"].items():
            g = dict(term.named_parameters())[pname].grad.item()
            assert math.isclose(g, w, rel_tol=RTOL, abs_tol=ATOL), f"{case} d/d{pname}"
