"""DynM as a Lightning callback: at the scheduled epochs, re-pair every student training sample
with the same-class teacher sample its current logits can best follow (SemBridge)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class DynamicMatching(Callback):
    """Re-matches `module.pairing` (a DynamicPairing) at the start of each epoch in `epochs`.

    The teacher's logit gallery over its training set is computed once (or read from the
    teacher cache); the student's logits are taken in eval mode. Rank 0's table is broadcast so
    every DDP rank trains on the same pairs even if float reductions differ across devices.
    """

    def __init__(self, epochs: list[int], temperature: float = 3.0, batch_size: int = 512) -> None:
        self.epochs, self.temperature, self.batch_size = (
            sorted(set(epochs)),
            temperature,
            batch_size,
        )
        self.gallery: torch.Tensor | None = None

    @torch.no_grad()
    def _logits(self, model, x: torch.Tensor, device) -> torch.Tensor:
        return torch.cat(
            [model(chunk.to(device)).logits.float().cpu() for chunk in x.split(self.batch_size)]
        )

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch not in self.epochs:
            return
        if self.gallery is None:
            self.gallery = (
                module.cache.logits.float().cpu()
                if module.cache is not None
                else self._logits(module.teacher, module.teacher_inputs, module.device)
            )
        train = trainer.datamodule.sets["train"]
        was_training = module.model.training
        module.model.eval()
        student_logits = self._logits(module.model, train.x, module.device)
        module.model.train(was_training)
        teacher_labels = module.teacher_labels
        module.pairing.rematch(
            student_logits, self.gallery, train.y, teacher_labels, self.temperature
        )
        module.pairing.table = trainer.strategy.broadcast(module.pairing.table, src=0)
        changed = module.pairing.changes[-1] if module.pairing.changes else 0
        module.log("pairing/changed", float(changed), on_step=False, on_epoch=True)
