"""The test score of every validated epoch, for one purpose only: putting cmkd's numbers beside
published ones whose authors picked the epoch that scores best on the test split itself (the
SemBridge code does). Nothing in cmkd selects on it: the checkpoint, the 'best' and 'last'
results and every comparison keep using validation and the last epoch. `run.track_test` turns
it on; results.json then holds `test_by_epoch` and `best_on_test`, labelled as what they are.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from cmkd.epochs import EpochPlan
from cmkd.models.inference import predict


class TestTracker(Callback):
    """After each validation, the model's accuracy on the test split (eval mode, no gradients,
    no random draw: the training that follows is the same as without it)."""

    def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, plan: EpochPlan) -> None:
        self.x, self.y, self.plan = test_x, test_y.long(), plan
        self.curve: dict[int, float] = {}

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not len(self.y):
            return
        was = module.model.training
        module.model.eval()
        logits = predict(module.model, self.x, 512, module.device, ("logits",)).logits
        module.model.train(was)
        epoch = self.plan.last_data_epoch(trainer.current_epoch)
        self.curve[epoch] = float((logits.argmax(1) == self.y).float().mean())

    def state_dict(self) -> dict[str, Any]:
        # A resumed run keeps the epochs scored before the interruption.
        return {"curve": {str(k): v for k, v in self.curve.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = {int(k): float(v) for k, v in state_dict.get("curve", {}).items()}

    def results(self) -> dict[str, Any]:
        """`test_by_epoch` and `best_on_test` (first epoch of the highest test accuracy)."""
        if not self.curve:
            return {}
        epochs = sorted(self.curve)
        best = max(epochs, key=lambda e: (self.curve[e], -e))
        return {
            "test_by_epoch": [[e, self.curve[e]] for e in epochs],
            "best_on_test": {
                "epoch": best,
                "test": {"acc": self.curve[best]},
                "note": "epoch chosen on the test split (the authors' protocol): for comparing "
                "with published numbers only, never a fair score",
            },
        }
