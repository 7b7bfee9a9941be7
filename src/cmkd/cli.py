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

# Only the standard library, cmkd.config and the light cmkd.bench.commands here: `cmkd --help`
# and `cmkd SUBCOMMAND --help` must answer without importing torch or Lightning (every
# function imports what it runs).
from cmkd.bench.commands import BENCH_COMMANDS, demo, report
from cmkd.config import (
    DataConfig,
    DisComConfig,
    DistillConfig,
    ModalitySpec,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from cmkd.errors import CmkdError
from cmkd.threads import passive_openmp_wait

# Before anything imports torch: OpenMP reads its waiting policy once, when it loads. Idle
# threads spinning on shared cores made a 2-thread step 9-15x slower (`cmkd bench perf`, threads).
passive_openmp_wait()


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

    _print_result(distill_student(data, model, optim, run, distill, modality, seed))


def evaluate(checkpoint: str, split: str = "test") -> None:
    """Score a checkpoint on a split of the data it was trained with.

    Args:
        checkpoint: A .ckpt written by `cmkd train` or `cmkd distill`, or its run folder.
        split: train, val or test.
    """
    from cmkd.recipes import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(checkpoint, split), indent=2))


def predict(
    checkpoint: str,
    output: str,
    split: str = "test",
    data: DataConfig | None = None,
    batch_size: int = 256,
) -> None:
    """Write a checkpoint's predictions as CSV: id, label, predicted class, class probabilities.

    Args:
        checkpoint: A .ckpt written by `cmkd train` or `cmkd distill`, or its run folder.
        output: The CSV file to write.
        split: A split of the data the checkpoint was trained with (train, val or test).
        data: Another source of the same modality and classes instead: every sample of it.
        batch_size: Samples per forward pass.
    """
    from cmkd.recipes import predict_checkpoint

    path = predict_checkpoint(checkpoint, output, split, data, batch_size)
    print(f"Saved {path}")


def match(
    modality: str,
    teacher: str,
    data: DataConfig = DataConfig(),  # noqa: B008
    method: str = "ssm",
    pseudo_view: str | None = None,
    backbone: str = "resnet34",
    epochs: int = 100,
    batch_size: int = 64,
    seed: int = 0,
    output: str = "runs/pairs/pairs.json",
    run: RunConfig = RunConfig(),  # noqa: B008
    class_map: str | dict[str, str | None] | None = None,
) -> None:
    """Offline matching (SemBridge's SSM and others): pair every student training sample with a
    same-class teacher training sample and write the pair list (JSON) that
    `pairing.strategy: matched` reads.

    Args:
        modality: The student's modality.
        teacher: The teacher checkpoint or run folder; its training samples are the candidates.
        data: The student's data (its split must not contain the teacher's training samples).
        method: A registered matcher (`cmkd matchers`): ssm (SemBridge's self-supervised
            matcher), teacher_embedding (cosine in the frozen teacher's space) or class_random
            (when no pseudo-view exists).
        pseudo_view: For ssm, teacher-to-student (e.g. eurosat_ms_to_rgb); for
            teacher_embedding, student-to-teacher.
        backbone: The SSM matcher's two encoders.
        epochs: SSM matcher training epochs.
        batch_size: SSM matcher batch size.
        seed: The student's split seed and the matcher's seed.
        output: Where the pair list goes.
        run: Accelerator, precision and progress bar of the matcher's training.
        class_map: For a teacher of other classes: teacher class -> student class (a YAML file
            or an inline mapping, as distill.class_map); students of classes no teacher class
            maps to get no teacher.
    """
    from cmkd.recipes import match_pairs

    pairs = match_pairs(
        teacher,
        data,
        modality,
        seed,
        output,
        method=method,
        pseudo_view=pseudo_view,
        backbone=backbone,
        epochs=epochs,
        batch_size=batch_size,
        run=run,
        class_map=class_map,
    )
    print(pairs.summary() + f"\nSaved {output}")


def discomkd(
    modalities: list[ModalitySpec],
    discomkd: DisComConfig = DisComConfig(),  # noqa: B008  (jsonargparse reads defaults here)
    optim: OptimConfig = OptimConfig(lr=1e-4, epochs=300),  # noqa: B008
    run: RunConfig = RunConfig(),  # noqa: B008
    seed: int = 0,
) -> None:
    """DisCoM-KD: one joint training of a classifier per modality (no teacher, no pairs); tests
    every modality's best-on-validation and last-epoch student and exports the best ones
    (run_dir/students/<modality>.safetensors + .json, loadable with
    cmkd.models.discomkd.load_student).

    Args:
        modalities: Two or more modalities, each with its data source and backbone.
        discomkd: Latent width, batch size, epoch length, gradient reversal, term weights,
            selection score, reproduction switch.
        optim: Optimiser and epochs (the paper: Adam, lr 1e-4, 300 epochs).
        run: Output folder, devices.
        seed: Seeds the splits, the initialisation and every modality's batch order.
    """
    from cmkd.methods.discomkd import train_discomkd

    result = train_discomkd(modalities, discomkd, optim, run, seed)
    for name, r in result["modalities"].items():
        best, last = r["best"]["test"], r["last"]["test"]
        size, single = r["parameters"], r["single_backbone_parameters"]
        print(
            f"{name:8s} test acc {100 * best['acc']:5.1f}, weighted F1 "
            f"{100 * best['f1_weighted']:5.1f} (best-on-val epoch {r['best']['epoch']}); "
            f"last epoch acc {100 * last['acc']:5.1f}; {size:,} parameters "
            f"(single backbone {single:,})"
        )
    print(f"Results and exported students in {result['run_dir']}")


def show_pairs(path: str) -> None:
    """Summarise a pair list: coverage, reuse of teacher samples, per-class counts (under a
    class map, the teacher classes of each student class, uncovered classes included).

    Args:
        path: A pair list JSON, or a run folder holding pairs.json.
    """
    from pathlib import Path

    from cmkd.pairing import PairList

    file = Path(path)
    if file.is_dir():
        file = file / "pairs.json"
    print(PairList.load(file).summary())


def _listing(entries: dict) -> None:
    width = max(map(len, entries))
    for name in sorted(entries):
        print(f"{name:<{width}}  {entries[name].description}")


def losses() -> None:
    """List the registered distillation terms: name, then what it is and its paper."""
    from cmkd.losses import LOSSES

    _listing(LOSSES)


def pairings() -> None:
    """List the registered pairing strategies (distill.pairing.strategy)."""
    from cmkd.pairing import PAIRINGS

    _listing(PAIRINGS)


def matchers() -> None:
    """List the registered offline matchers (cmkd match --method)."""
    from cmkd.pairing import MATCHERS

    _listing(MATCHERS)


def _print_result(result: dict) -> None:
    from cmkd.training import is_global_zero

    if not is_global_zero():  # every DDP rank holds the same result: print it once
        return
    best, last = result.get("best"), result["last"]
    if "test" not in last:
        print(f"trained; {result['evaluation']}; kept: {result['selection']}")
    elif best is None:
        print(
            f"test acc {100 * last['test']['acc']:.1f} % (last epoch: {result['selection']}); "
            f"macro F1 {100 * last['test']['f1_macro']:.1f}"
        )
    else:
        print(
            f"test acc {100 * best['test']['acc']:.1f} % (best on validation, epoch "
            f"{best['epoch']}), {100 * last['test']['acc']:.1f} % (last epoch); "
            f"macro F1 {100 * best['test']['f1_macro']:.1f}"
        )
    print(f"checkpoint: {result['checkpoint']}")


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
    ("predict",): "--checkpoint",
    ("bench", "grid"): "--grid",
    ("report",): "--source",
}


def _positional_to_option(argv: list[str]) -> list[str]:
    for prefix, flag in _POSITIONAL.items():
        n = len(prefix)
        if tuple(argv[:n]) == prefix and len(argv) > n and not argv[n].startswith("-"):
            return [*argv[:n], flag, *argv[n:]]
    return argv


def commands() -> dict:
    """Every subcommand and the function behind it (nested: `cmkd bench grid`)."""

    return {
        "train": train,
        "distill": distill,
        "evaluate": evaluate,
        "predict": predict,
        "demo": demo,
        "losses": losses,
        "pairings": pairings,
        "matchers": matchers,
        "match": match,
        "discomkd": discomkd,
        "pairs": {"show": show_pairs},
        "report": report,
        **BENCH_COMMANDS,
    }


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import CLI, ArgumentError

    from cmkd.cli_input import CommandLine, check_configs, lock_down_parsing, parse_error_line
    from cmkd.data.root import set_cli_root

    table = commands()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help", "--print_config"} & set(argv):
        # Lightning sets its logger to INFO when imported, so import it (the command will
        # anyway) before quietening its start-up banners and tips, which drown the results;
        # warnings still show. A help request imports nothing heavy and answers at once.
        import lightning.pytorch  # noqa: F401

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # A deprecation inside Lightning itself that users can do nothing about.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    lock_down_parsing(table)
    line = CommandLine([], "")
    try:
        args, root = _pop_data_root(argv)
        set_cli_root(root)
        line = check_configs(_positional_to_option(args), table)
        # exit_on_error=False: a parser error comes back here as one line, not 30 of usage.
        CLI(
            table,
            args=line.args,
            description=__doc__,
            as_positional=False,
            exit_on_error=False,
            allow_abbrev=False,  # --optim.epoch is a typo, not --optim.epochs
        )
    except ArgumentError as err:
        print(f"cmkd: error: {parse_error_line(str(err), line, table)}", file=sys.stderr)
        return 2
    except CmkdError as err:
        print(f"cmkd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmkd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
