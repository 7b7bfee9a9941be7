"""DynM as a Lightning callback: at the scheduled epochs, re-pair every student training sample
with the same-class teacher sample its current logits can best follow (SemBridge)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from cmkd.io import write_json
from cmkd.models.inference import predict


def table_digest(table: np.ndarray) -> str:
    """sha256 of a pair table as little-endian int64: equal digests, equal pairs."""
    return hashlib.sha256(np.ascontiguousarray(table, dtype="<i8").tobytes()).hexdigest()


class DynamicMatching(Callback):
    """Re-matches `module.pairing` (a DynamicPairing) at the start of each epoch in `epochs`.

    The teacher's logit gallery over its training set is computed once (or read from the
    teacher cache); the student's logits are taken in eval mode. Rank 0's table is broadcast so
    every DDP rank trains on the same pairs even if float reductions differ across devices.

    With `audit_dir`, each rank writes `rank{r}.json` there: the digest of the table it holds
    when training starts (the loaded pair list, or the checkpoint's table on resume) and after
    every re-match (with its own digest before the broadcast and the number of changed pairs).
    Equal digests across ranks are the proof that every rank trained on the same pairs.
    """

    def __init__(
        self,
        epochs: list[int],
        temperature: float = 3.0,
        batch_size: int = 512,
        audit_dir: str | Path | None = None,
    ) -> None:
        self.epochs, self.temperature, self.batch_size = (
            sorted(set(epochs)),
            temperature,
            batch_size,
        )
        self.audit_dir = Path(audit_dir) if audit_dir is not None else None
        self.gallery: torch.Tensor | None = None
        self._audit: dict | None = None

    def _logits(self, model, x: torch.Tensor, device) -> torch.Tensor:
        return predict(model, x, self.batch_size, device, ("logits",)).logits.float()

    def _record(self, trainer, event: str, **fields) -> None:
        if self.audit_dir is None:
            return
        path = self.audit_dir / f"rank{trainer.global_rank}.json"
        if self._audit is None:
            # A resumed run appends to what the interrupted one recorded.
            old = json.loads(path.read_text()) if path.is_file() else {}
            self._audit = {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "tables": old.get("tables", []),
            }
        entry = {"event": event, "epoch": trainer.current_epoch, **fields}
        self._audit["tables"].append(entry)
        write_json(path, self._audit)

    def on_train_start(self, trainer, module) -> None:
        self._record(trainer, "start", sha256=table_digest(module.pairing.table))

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
        class_map = getattr(module, "class_map", None)
        if class_map is not None:
            # The teacher's gallery is in the map's covered classes (MappedTeacher): compare the
            # student's logits over the same classes.
            student_logits = class_map.student_logits(student_logits)
        teacher_labels = module.teacher_labels
        before = np.array(module.pairing.table)
        module.pairing.rematch(
            student_logits, self.gallery, train.y, teacher_labels, self.temperature
        )
        local = table_digest(module.pairing.table)
        module.pairing.table = trainer.strategy.broadcast(module.pairing.table, src=0)
        # Counted against this rank's previous table, after the broadcast: what changed in
        # the pairs it trains on.
        changed = int((module.pairing.table != before).sum())
        if module.pairing.changes:
            module.pairing.changes[-1] = changed
        module.log("pairing/changed", float(changed), on_step=False, on_epoch=True)
        self._record(
            trainer,
            "rematch",
            sha256=table_digest(module.pairing.table),
            local_sha256=local,
            changed=changed,
        )
