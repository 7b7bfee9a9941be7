"""The `cmkd` command. Subcommands take YAML configs (`--config configs/...yaml`) and any
field on the command line (`--optim.epochs 5`); `cmkd SUBCOMMAND --help` lists them all.

A global `--data-root PATH` (anywhere on the line) sets where the datasets are; else
$CMKD_DATA, else ../shared/data beside the checkout, else ~/.cache/cmkd.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from typing import Literal

from cmkd.bench.commands import BENCH_COMMANDS, demo, report
from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig
from cmkd.errors import CmkdError


def train(
    modality: str,
    data: DataConfig = DataConfig(),  # noqa: B008  (jsonargparse reads defaults from here)
    model: ModelConfig = ModelConfig(),  # noqa: B008
    optim: OptimConfig = OptimConfig(),  # noqa: B008
    run: RunConfig = RunConfig(),  # noqa: B008
    seed: int = 0,
) -> None:
    """Train one network on one modality with cross-entropy: a teacher, or the no-KD student.

    Args:
        modality: The modality to train on (e.g. ms or rgb for eurosat_paired).
        data: Data source, split and batching.
        model: The network.
        optim: Optimiser and epochs.
        run: Output folder, devices, resume.
        seed: Seeds the split, the initialisation and the batch order.
    """
    from cmkd.recipes import train_classifier

    _print_result(train_classifier(data, model, optim, run, modality, seed))


def distill(
    modality: str,
    distill: DistillConfig = DistillConfig(),  # noqa: B008
    data: DataConfig = DataConfig(),  # noqa: B008
    model: ModelConfig = ModelConfig(),  # noqa: B008
    optim: OptimConfig = OptimConfig(),  # noqa: B008
    run: RunConfig = RunConfig(),  # noqa: B008
    seed: int = 0,
) -> None:
    """Distil a frozen teacher checkpoint into a student on another modality of the same samples.

    Args:
        modality: The student's modality.
        distill: Teacher checkpoint, CE weight and the distillation terms.
        data: Data source, split and batching (the teacher's split must match).
        model: The student network.
        optim: Optimiser and epochs.
        run: Output folder, devices, resume.
        seed: Seeds the split, the initialisation and the batch order.
    """
    from cmkd.recipes import distill_student

    if not distill.teacher:
        raise CmkdError("no teacher checkpoint: set --distill.teacher PATH")
    _print_result(distill_student(data, model, optim, run, distill, modality, seed))


def evaluate(checkpoint: str, split: str = "test") -> None:
    """Score a checkpoint on a split of the data it was trained with.

    Args:
        checkpoint: A .ckpt written by `cmkd train` or `cmkd distill`.
        split: train, val or test.
    """
    from cmkd.recipes import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(checkpoint, split), indent=2))


def match(
    modality: str,
    teacher: str,
    data: DataConfig = DataConfig(),  # noqa: B008
    method: Literal["ssm", "teacher_embedding", "class_random"] = "ssm",
    pseudo_view: str | None = None,
    backbone: str = "resnet34",
    epochs: int = 100,
    batch_size: int = 64,
    seed: int = 0,
    output: str = "runs/pairs/pairs.json",
) -> None:
    """SSM matching (SemBridge): pair every student training sample with a same-class teacher
    training sample and write the pair list (JSON) used by `pairing.strategy: matched`.

    Args:
        modality: The student's modality.
        teacher: The teacher checkpoint; its training samples are the candidates.
        data: The student's data (its split must not contain the teacher's training samples).
        method: ssm (SemBridge's self-supervised matcher), teacher_embedding (cosine in
            the frozen teacher's space) or class_random (when no pseudo-view exists).
        pseudo_view: For ssm, teacher-to-student (e.g. eurosat_ms_to_rgb); for
            teacher_embedding, student-to-teacher.
        backbone: The matcher's two encoders.
        epochs: Matcher training epochs.
        batch_size: Matcher batch size.
        seed: The student's split seed and the matcher's seed.
        output: Where the pair list goes.
    """
    from cmkd.recipes import match_pairs

    pairs = match_pairs(
        teacher, data, modality, seed, output, pseudo_view, backbone, epochs, batch_size
    )
    print(pairs.summary() + f"\nSaved {output}")


def show_pairs(path: str) -> None:
    """Summarise a pair list: coverage, reuse of teacher samples, per-class counts.

    Args:
        path: A pair list JSON, or a run folder holding pairs.json.
    """
    from pathlib import Path

    from cmkd.matching.pairs import PairList

    file = Path(path)
    if file.is_dir():
        file = file / "pairs.json"
    print(PairList.load(file).summary())


def losses() -> None:
    """List the registered distillation terms: name, then what it is and its paper."""
    from cmkd.losses import LOSSES

    width = max(map(len, LOSSES))
    for name in sorted(LOSSES):
        print(f"{name:<{width}}  {LOSSES[name].description}")


def _print_result(result: dict) -> None:
    from cmkd.training import is_global_zero

    if not is_global_zero():  # every DDP rank holds the same result: print it once
        return
    best, last = result["best"], result["last"]
    print(
        f"test acc {100 * best['test']['acc']:.1f} % (best on validation, epoch {best['epoch']}), "
        f"{100 * last['test']['acc']:.1f} % (last epoch); "
        f"macro F1 {100 * best['test']['f1_macro']:.1f}\n"
        f"checkpoint: {result['checkpoint']}"
    )


def _pop_data_root(argv: list[str]) -> tuple[list[str], str | None]:
    rest, root, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--data-root":
            if i + 1 >= len(argv):
                raise CmkdError("--data-root needs a path")
            root, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--data-root="):
            root = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, root


# Subcommands whose one required argument may also be given positionally, e.g.
# `cmkd pairs show RUN` or `cmkd evaluate CKPT` (options stay named everywhere else, so YAML
# configs can supply them).
_POSITIONAL = {
    ("pairs", "show"): "--path",
    ("evaluate",): "--checkpoint",
    ("bench", "grid"): "--grid",
    ("report",): "--source",
}


def _positional_to_option(argv: list[str]) -> list[str]:
    for prefix, flag in _POSITIONAL.items():
        n = len(prefix)
        if tuple(argv[:n]) == prefix and len(argv) > n and not argv[n].startswith("-"):
            return [*argv[:n], flag, *argv[n:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI

    from cmkd.data.root import set_cli_root
    from cmkd.methods.discomkd import discomkd_command

    # Lightning's start-up banners and tips drown the results; warnings still show, except a
    # deprecation inside Lightning itself that users can do nothing about.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        args, root = _pop_data_root(list(sys.argv[1:] if argv is None else argv))
        set_cli_root(root)
        args = _positional_to_option(args)
        CLI(
            {
                "train": train,
                "distill": distill,
                "evaluate": evaluate,
                "demo": demo,
                "losses": losses,
                "match": match,
                "discomkd": discomkd_command,
                "pairs": {"show": show_pairs},
                "report": report,
                **BENCH_COMMANDS,
            },
            args=args,
            description=__doc__,
            as_positional=False,
        )
    except CmkdError as err:
        print(f"cmkd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmkd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
