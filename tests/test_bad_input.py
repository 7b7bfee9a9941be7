"""Every kind of bad input stops with exit status 2 and ONE line `cmkd: error: ...` naming the
file, key or value and the fix: no traceback, no usage dump, and no half-written run folder
that would block the corrected rerun. Configs never run code (security cases at the end).

Most cases run in-process through `cmkd.cli.main` (fast); a few through a real process, to
show that nothing else reaches the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cmkd.cli import main
from cmkd.config import DataConfig, ModelConfig, OptimConfig, RunConfig

MFEAT = ["--data.source", "mfeat", "--model.backbone", "mlp", "--optim.epochs", "1"]


def refused(capsys, args: list[str], *culprits: str, out: Path | None = None) -> str:
    """Run `cmkd args`; assert exit 2, one error line naming every culprit, no traceback or
    usage, and (with `out`) no run folder left behind. Returns the error line."""
    extra = ["--run.output_dir", str(out), "--run.progress_bar", "false"] if out else []
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    lines = [line for line in err.splitlines() if line.startswith("cmkd: error: ")]
    assert len(lines) == 1, err
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    if out is not None:
        assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    return lines[0]


@pytest.fixture(scope="module")
def mfeat_rows(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real Fourier view of UCI mfeat (2000 x 76) and its labels."""
    table = np.loadtxt(data_root / "mfeat" / "mfeat-fou.csv", delimiter=",", skiprows=1)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


@pytest.fixture(scope="module")
def teacher(data_root: Path, tmp_path_factory) -> Path:
    """A real 1-epoch MLP teacher on mfeat's Fourier view (its run folder)."""
    from cmkd.recipes import train_classifier

    out = tmp_path_factory.mktemp("teacher")
    run = RunConfig(output_dir=str(out), name="t", accelerator="cpu", progress_bar=False)
    train_classifier(
        DataConfig(source="mfeat"), ModelConfig(backbone="mlp"), OptimConfig(epochs=1), run, "fou"
    )
    return out / "t" / "seed0"


def npz(tmp_path: Path, name: str, **arrays: np.ndarray) -> list[str]:
    path = tmp_path / name
    np.savez(path, **arrays)
    return ["--data.source", "npz", "--data.options", json.dumps({"path": str(path)})]


# --- the command line and config files ----------------------------------------------------


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modality: fou\ndata:\n  source: mfeat\n  batch_size: [1\n")
    refused(capsys, ["train", "--config", str(bad)], str(bad), "line 5", "YAML")
    section = tmp_path / "data.yaml"  # a section's own file: `--data data.yaml`
    section.write_text("source: mfeat\nbatch_size: [1\n")
    refused(capsys, ["train", "--modality", "fou", "--data", str(section)], str(section), "line 3")


def test_unknown_config_key_names_key_file_and_the_likely_fix(tmp_path, capsys) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("modality: fou\noptim:\n  epoch: 3\n")
    refused(capsys, ["train", "--config", str(bad)], "'optim.epoch'", str(bad), "'optim.epochs'")
    section = tmp_path / "optim.yaml"
    section.write_text("epoch: 3\n")
    args = ["train", "--modality", "fou", "--optim", str(section)]
    refused(capsys, args, "'optim.epoch'", str(section), "'optim.epochs'")


def test_unknown_and_abbreviated_options_are_refused(tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    # An abbreviation is a typo, never silently taken for --optim.epochs.
    args = ["train", "--modality", "fou", *MFEAT, "--optim.epoch", "1"]
    refused(capsys, args, "'optim.epoch'", "did you mean 'optim.epochs'", out=out)
    refused(capsys, ["train", "--modality", "fou", "--bogus", "1"], "'bogus'", out=out)


@pytest.mark.parametrize(
    ("option", "value", "culprits"),
    [
        ("--optim.epochs", "abc", ["optim.epochs", "an integer", "'abc'"]),
        ("--optim.optimizer", "rmsprop", ["optim.optimizer", "adam, adamw, sgd", "'rmsprop'"]),
        ("--data.train_per_class", "many", ["data.train_per_class", "an integer or null"]),
        ("--run.matmul_weight_grad", "maybe", ["run.matmul_weight_grad", "'maybe'"]),
        ("--run.fused_optimizer", "often", ["run.fused_optimizer: expected true or false or auto"]),
        (
            "--run.standardize_once",
            "maybe",
            ["run.standardize_once: expected true or false or auto, got 'maybe'"],
        ),
        ("--distill.terms", "[{name: kd, weight: x}]", ["distill.terms", "weight", "'x'"]),
    ],
)
def test_value_of_the_wrong_type_names_key_and_value(option, value, culprits, capsys) -> None:
    refused(capsys, ["distill", "--modality", "fou", option, value], *culprits)


def test_a_bad_value_is_blamed_on_the_file_only_when_the_file_gave_it(tmp_path, capsys) -> None:
    config = tmp_path / "fine.yaml"  # a valid value in the file, a bad one on the command line
    config.write_text("modality: fou\noptim:\n  optimizer: adamw\n")
    for args in (["--config", str(config), "--optim.optimizer", "rmsprop"],
                 ["--optim.optimizer", "rmsprop", "--config", str(config)]):  # fmt: skip
        message = refused(capsys, ["train", *args], "optim.optimizer", "'rmsprop'")
        assert "config file" not in message
    config.write_text("modality: fou\noptim:\n  optimizer: rmsprop\n")
    args = ["train", "--config", str(config), "--optim.optimizer", "sgd"]
    refused(capsys, args, "'rmsprop' (in config file " + str(config))


def test_missing_required_option_and_unknown_command(capsys) -> None:
    refused(capsys, ["train"], "--modality")
    refused(capsys, ["trian"], "'trian'", "did you mean 'train'")
    refused(capsys, ["bench"], "grid", "cmkd bench --help")


@pytest.mark.parametrize(
    ("content", "culprit"),
    [(None, "does not exist"), ("- 1\n- 2\n", "not a mapping")],
)
def test_config_file_missing_or_not_a_mapping(tmp_path, capsys, content, culprit) -> None:
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    refused(capsys, ["train", "--config", str(path)], str(path), culprit)


def test_saved_config_of_another_command_says_which(teacher, capsys) -> None:
    saved = teacher / "config.yaml"
    refused(capsys, ["distill", "--config", str(saved)], "`cmkd train --config")


# --- inputs found wrong once the data, network or teacher is known -------------------------


@pytest.mark.parametrize(
    ("options", "culprits"),
    [
        (["--data.source", "mfeat_nope"], ["'mfeat_nope'", "mfeat"]),
        (["--data.options", "{view: fou}"], ["'view'", "'mfeat'", "views"]),
        (["--modality", "sound"], ["'sound'", "fou"]),
    ],
)
def test_unknown_source_option_or_modality(tmp_path, capsys, data_root, options, culprits) -> None:
    args = ["train", "--modality", "fou", *MFEAT, *options]
    refused(capsys, args, *culprits, out=tmp_path / "runs")


def test_missing_dataset_folder_and_data_root(tmp_path, capsys) -> None:
    args = ["train", "--modality", "fou", *MFEAT]
    refused(capsys, [*args, "--data-root", str(tmp_path)], str(tmp_path / "mfeat"))
    refused(capsys, [*args, "--data-root", str(tmp_path / "nope")], str(tmp_path / "nope"))
    assert list(tmp_path.iterdir()) == []


def test_unreadable_image_in_a_folder_source(tmp_path, capsys, data_root) -> None:
    folder = tmp_path / "rgb"
    for cls in ("Forest", "River"):
        (folder / cls).mkdir(parents=True)
        for src in sorted((data_root / "eurosat" / "rgb" / cls).iterdir())[:3]:
            (folder / cls / src.name).write_bytes(src.read_bytes())
    broken = sorted((folder / "River").iterdir())[1]
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    options = json.dumps({"folders": {"rgb": str(folder)}})
    args = ["train", "--modality", "rgb", "--data.source", "folder", "--data.options", options]
    refused(capsys, args, str(broken), out=tmp_path / "runs")


def test_teacher_with_other_classes(teacher, tmp_path, capsys, mfeat_rows) -> None:
    x, y = mfeat_rows
    source = npz(tmp_path, "two.npz", x_fac=x[y < 2], y=y[y < 2], classes=np.array(["a", "b"]))
    args = ["distill", "--modality", "fac", *source, "--model.backbone", "mlp"]
    refused(capsys, [*args, "--distill.teacher", str(teacher)], "classes", "['a', 'b']")


def test_unknown_backbone(tmp_path, capsys, data_root) -> None:
    args = ["train", "--modality", "fou", *MFEAT, "--model.backbone", "resnet_nope"]
    refused(capsys, args, "'resnet_nope'", "mlp", out=tmp_path / "runs")


@pytest.mark.parametrize(
    ("terms", "culprits"),
    [
        ("[{name: kd_nope}]", ["'kd_nope'", "distill.terms[0].name", "cmkd losses"]),
        ("[{name: kd}, {name: kd}]", ["'kd' twice"]),
        ("[{name: kd, params: {temperatur: 4}}]", ["'kd'", "temperatur"]),
    ],
)
def test_bad_distillation_terms(teacher, tmp_path, capsys, terms, culprits) -> None:
    args = ["distill", "--modality", "fac", *MFEAT, "--distill.teacher", str(teacher)]
    refused(capsys, [*args, "--distill.terms", terms], *culprits, out=tmp_path / "runs")


def test_npz_features_stored_as_strings(tmp_path, capsys, mfeat_rows) -> None:
    x, y = mfeat_rows
    source = npz(tmp_path, "s.npz", x_v=x.astype(str), y=y)
    args = ["train", "--modality", "v", *source, "--model.backbone", "mlp"]
    refused(capsys, args, "s.npz", "x_v", "strings", out=tmp_path / "runs")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npz_nan_or_inf_names_file_array_and_row(tmp_path, capsys, mfeat_rows, bad) -> None:
    x, y = mfeat_rows
    x = x.copy()
    x[7, 3] = bad
    source = npz(tmp_path, "n.npz", x_v=x, y=y)
    args = ["train", "--modality", "v", *source, "--model.backbone", "mlp"]
    refused(capsys, args, "n.npz", "x_v", "NaN or Inf", "row 7", out=tmp_path / "runs")


def test_npz_of_python_objects(tmp_path, capsys) -> None:
    path = tmp_path / "o.npz"
    np.savez(path, x_v=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    args = ["train", "--modality", "v", "--data.source", "npz", "--data.options"]
    refused(capsys, [*args, json.dumps({"path": str(path)})], "o.npz", "Python objects")


def test_npz_vectors_with_the_default_backbone_then_the_fixed_rerun(
    tmp_path, capsys, mfeat_rows
) -> None:
    """The first run of every npz user: vectors through the default small_cnn."""
    x, y = mfeat_rows
    source = npz(tmp_path, "v.npz", x_v=x[::10], y=y[::10])
    out = tmp_path / "runs"
    args = ["train", "--modality", "v", *source, "--optim.epochs", "1"]
    refused(capsys, args, "small_cnn", "(76,)", "model.backbone mlp", out=out)
    # Nothing was left behind: the corrected command runs into the same folder.
    extra = ["--run.output_dir", str(out), "--run.progress_bar", "false"]
    assert main([*args, "--model.backbone", "mlp", *extra]) == 0
    assert (out / "npz-v-mlp" / "seed0" / "results.json").is_file()


def test_npz_class_without_samples(tmp_path, capsys, mfeat_rows) -> None:
    x, y = mfeat_rows
    classes = np.array([*(str(d) for d in range(10)), "ten"])
    source = npz(tmp_path, "c.npz", x_v=x, y=y, classes=classes)
    args = ["train", "--modality", "v", *source, "--model.backbone", "mlp"]
    refused(capsys, args, "c.npz", "class 'ten' has no sample", out=tmp_path / "runs")


@pytest.mark.parametrize(("held_out", "with_val"), [("test", False), ("test", True), ("val", True)])
def test_carried_split_with_a_class_not_in_train(
    tmp_path, capsys, mfeat_rows, held_out, with_val
) -> None:
    """A class the model would never see in training (only in the file's test, or val and
    test rows) is refused, not scored as errors."""
    x, y = mfeat_rows
    row = np.arange(len(y))
    split = np.where(row % 5 == 0, "test", np.where(with_val & (row % 5 == 1), "val", "train"))
    split[(y == 9) & (split == "train")] = held_out
    source = npz(tmp_path, "t.npz", x_v=x, y=y, split=split)
    args = ["train", "--modality", "v", *source, "--model.backbone", "mlp"]
    refused(capsys, args, "t.npz", "class '9' has no training sample", out=tmp_path / "runs")


@pytest.mark.parametrize(
    ("arrays", "culprits"),
    [
        ({"split": "no_train"}, ["split has no train rows"]),
        ({"split": "bad_word"}, ["split holds 'holdout'"]),
        ({"x_v_test": True}, ["x_v_test", "no y_test"]),
    ],
)
def test_malformed_carried_split(tmp_path, capsys, mfeat_rows, arrays, culprits) -> None:
    x, y = mfeat_rows
    extra: dict[str, np.ndarray] = {}
    if arrays.get("split") == "no_train":
        extra["split"] = np.full(len(y), "test")
    if arrays.get("split") == "bad_word":
        extra["split"] = np.where(np.arange(len(y)) % 5 == 0, "holdout", "train")
    if arrays.get("x_v_test"):
        extra["x_v_test"] = x[:10]
    source = npz(tmp_path, "m.npz", x_v=x, y=y, **extra)
    args = ["train", "--modality", "v", *source, "--model.backbone", "mlp"]
    refused(capsys, args, "m.npz", *culprits, out=tmp_path / "runs")


@pytest.mark.parametrize(
    ("options", "culprits"),
    [
        (["--run.accelerator", "gpu"], ["'gpu'", "--run.accelerator cpu"]),
        (["--optim.epochs", "0"], ["optim.epochs", "0"]),
        (["--data.batch_size", "0"], ["data.batch_size", "0"]),
        (["--optim.lr", "-0.1"], ["optim.lr", "-0.1"]),
        (["--run.devices", "two"], ["run.devices 'two'"]),
        (["--run.strategy", "fastest"], ["run.strategy 'fastest'"]),
        (["--run.precision", "8-bit"], ["run.precision '8-bit'"]),
        (["--optim.nesterov", "true"], ["optim.nesterov", "sgd"]),
        (["--optim.optimizer", "sgd", "--optim.momentum", "1.5"], ["optim.momentum", "1.5"]),
        (["--data.split", "official"], ["'mfeat' has no official test split"]),
        (["--data.val_fraction", "0.5", "--data.test_fraction", "0.5"], ["fractions"]),
        (["--data.train_per_class", "0"], ["train_per_class", "0"]),
    ],
)
def test_settings_that_would_fail_late(tmp_path, capsys, data_root, options, culprits) -> None:
    if "gpu" in options and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["train", "--modality", "fou", *MFEAT, *options]
    refused(capsys, args, *culprits, out=tmp_path / "runs")


def test_output_folder_that_cannot_be_created(teacher, tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = ["train", "--modality", "fou", *MFEAT, "--run.output_dir", str(blocker / "runs")]
    refused(capsys, args, str(blocker), "is a file")
    args = ["predict", str(teacher), "--output", str(blocker / "predictions.csv")]
    refused(capsys, args, str(blocker), "is a file")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("change", "culprits"),
    [
        ({"backbone": "small_cnn"}, ["'small_cnn'", "weights missing"]),
        ({"in_chans": 13}, ["13 input channels", "normalize.mean is (76,)"]),
    ],
)
def test_teacher_whose_weights_do_not_fit_its_network(
    teacher, tmp_path, capsys, change, culprits
) -> None:
    ckpt = torch.load(teacher / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["network"].update(change)
    bad = tmp_path / "teacher.ckpt"
    torch.save(ckpt, bad)
    args = ["distill", "--modality", "fac", *MFEAT, "--distill.teacher", str(bad)]
    refused(capsys, args, str(bad), *culprits, out=tmp_path / "runs")


def test_pair_list_matching_nothing_names_the_file(teacher, tmp_path, capsys) -> None:
    pairs = tmp_path / "pairs.json"
    doc = {"format": "cmkd-pairs", "method": "hand", "classes": [str(d) for d in range(10)]}
    doc |= {"student_ids": ["x"], "teacher_ids": ["y"], "student_labels": [0]}
    pairs.write_text(json.dumps({**doc, "teacher_labels": [0]}))
    args = ["distill", "--modality", "fac", *MFEAT, "--distill.teacher", str(teacher)]
    args += ["--distill.pairing.strategy", "matched", "--distill.pairing.pairs", str(pairs)]
    refused(capsys, args, str(pairs), "has no pair", out=tmp_path / "runs")


# --- security: nothing in a config or a checkpoint runs --------------------------------------

PAYLOADS = {
    "shell": {"class_path": "imaplib.IMAP4_stream", "init_args": {"command": "touch {marker}"}},
    "file": {"class_path": "logging.FileHandler", "init_args": {"filename": "{marker}"}},
}
FREE_FORM = {
    "model.options": lambda p: {"model": {"options": {"x": p}}},
    "data.options": lambda p: {"data": {"options": p}},
    "distill.terms[].params": lambda p: {"distill": {"terms": [{"name": "kd", "params": p}]}},
    "distill.pairing.options": lambda p: {"distill": {"pairing": {"options": {"x": p}}}},
}


def _payload(kind: str, marker: Path) -> dict:
    return json.loads(json.dumps(PAYLOADS[kind]).replace("{marker}", str(marker)))


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("field", sorted(FREE_FORM))
def test_class_path_in_any_free_form_field_runs_nothing(
    teacher, tmp_path, capsys, field, kind
) -> None:
    marker = tmp_path / "MARKER"
    config = {"modality": "fac", **FREE_FORM[field](_payload(kind, marker))}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["distill", "--config", str(path), *MFEAT, "--distill.teacher", str(teacher)]
    refused(capsys, args, str(path), "class_path", out=tmp_path / "runs")
    # The same payload given on the command line.
    option = "--" + field.replace("[]", "").replace(".params", "")
    value = FREE_FORM[field](_payload(kind, marker))
    for part in option[2:].split("."):
        value = value[part]
    refused(capsys, ["distill", "--modality", "fac", option, json.dumps(value)], option)
    assert not marker.exists()


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
    ],
)
def test_python_yaml_tags_run_nothing(tmp_path, capsys, tag) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "tag.yaml"
    path.write_text(f"modality: fou\ndata:\n  options: {tag.format(marker=marker)}\n")
    refused(capsys, ["train", "--config", str(path)], str(path), "line 3", "python", "not allowed")
    assert not marker.exists()


class _Hostile:
    """Unpickling this runs a shell command: what weights_only must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_runs_nothing_and_relays_no_unsafe_advice(
    tmp_path, capsys, data_root
) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Hostile(marker)}, evil)
    args = ["distill", "--modality", "fac", *MFEAT, "--distill.teacher", str(evil)]
    line = refused(capsys, args, str(evil), "never runs code", out=tmp_path / "runs")
    line += refused(capsys, ["evaluate", str(evil)], str(evil), "plain weights")
    assert "weights_only" not in line and "trust" not in line
    assert not marker.exists()


# --- a real process: nothing but the one line reaches the terminal ----------------------------


def _cmkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run(
        [sys.executable, "-m", "cmkd.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def _only_the_error_line(proc: subprocess.CompletedProcess, *culprits: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cmkd: error: "), proc.stderr
    assert all(c in lines[0] for c in culprits), lines[0]
    assert proc.stdout == ""


def test_real_process_yaml_payload_and_usage_error(tmp_path) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"modality: fou\ndata: !!python/object/apply:os.system ['touch {marker}']\n")
    _only_the_error_line(_cmkd("train", "--config", str(evil), cwd=tmp_path), str(evil))
    assert not marker.exists()
    _only_the_error_line(
        _cmkd("train", "--modality", "fou", "--optim.epochs", "x", cwd=tmp_path), "optim.epochs"
    )
    assert list(tmp_path.iterdir()) == [evil]


def test_real_process_npz_vectors_with_small_cnn(tmp_path, mfeat_rows) -> None:
    x, y = mfeat_rows
    np.savez(tmp_path / "v.npz", x_v=x[::20], y=y[::20])
    args = ["train", "--modality", "v", "--data.source", "npz", "--optim.epochs", "1"]
    proc = _cmkd(*args, "--data.options", "{path: v.npz}", cwd=tmp_path)
    _only_the_error_line(proc, "small_cnn", "model.backbone mlp")
    assert not (tmp_path / "runs").exists()
