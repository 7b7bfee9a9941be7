"""The public Python API (`import cmkd`): light to import, typed constructors for data and
tasks, your own modules through the adapter, and the same seeded start as the CLI's recipes."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

import cmkd
from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.data.datamodule import prepare_data
from cmkd.methods.classifier import module_args
from cmkd.recipes import evaluate_checkpoint, train_classifier

MFEAT = DataConfig(source="mfeat", options={"views": ["fac", "pix"]}, batch_size=64)
MLP = ModelConfig(backbone="mlp", options={"hidden": [64]})
HEAVY = ("torch", "lightning", "timm", "torchvision", "torchmetrics", "numpy", "scipy")


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_public_names_resolve_lazily_and_all_lists_them() -> None:
    assert cmkd.__all__ == ["__version__", *cmkd._EXPORTS]
    assert dir(cmkd) == sorted(cmkd.__all__)
    for name in cmkd.__all__:
        assert getattr(cmkd, name) is not None, name
    from cmkd.losses.base import register
    from cmkd.methods.classifier import ClassifierModule

    assert cmkd.register_loss is register and cmkd.ClassifierTask is ClassifierModule
    assert {"kd", "fitnet"} <= set(cmkd.LOSSES) and "paired" in cmkd.PAIRINGS
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cmkd.nope  # noqa: B018


def test_import_cmkd_and_its_cli_load_no_torch() -> None:
    loaded = _python(
        f"""
        import sys
        import cmkd, cmkd.cli, cmkd.config
        assert cmkd.CmkdError and cmkd.DataConfig  # light names resolve without torch
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
        """
    )
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["discomkd", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    """The help is built from signatures and docstrings alone. The bench commands are replaced
    by stand-ins here: they are another module's concern (moving into a light module of their
    own), and whatever they import would hide what the rest imports."""
    out = _python(
        f"""
        import importlib.abc, importlib.machinery, sys, types

        class Stand_in(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path, target=None):
                if name.startswith("cmkd.bench"):
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)
                return None

            def create_module(self, spec):
                module = types.ModuleType(spec.name)
                module.__path__ = []

                def command() -> None:
                    \"\"\"A stand-in.\"\"\"

                # a command for any lower-case name, an empty table for an upper-case one
                module.__getattr__ = lambda name: {{}} if name.isupper() else command
                return module

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, Stand_in())
        from cmkd.cli import main
        try:
            main({argv!r})
        except SystemExit:
            pass
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
        """
    )
    assert "usage:" in out and out.strip().splitlines()[-1] == "[]", out[-2000:]


def test_create_network_for_any_channel_count() -> None:
    net = cmkd.create_network("small_cnn", in_chans=13, num_classes=10, widths=[8, 16])
    out = net(torch.zeros(2, 13, 32, 32))
    assert isinstance(out, cmkd.ModelOutput) and out.logits.shape == (2, 10)
    assert out.feature_map.shape[:2] == (2, net.feature_channels)


def test_data_from_source_takes_every_data_config_field() -> None:
    params = set(inspect.signature(cmkd.DataModule.from_source).parameters)
    assert params - {"modality", "seed"} == {f.name for f in fields(DataConfig)}


def test_data_from_arrays_splits_by_seed_or_as_given(data_root) -> None:
    samples = cmkd.DataModule.from_source("mfeat", "fac", options={"views": ["fac", "mor"]})
    fac, mor = (samples.prepared.samples[m] for m in ("fac", "mor"))
    both = cmkd.DataModule.from_arrays({"fac": fac.x, "mor": mor.x}, fac.y, modality="fac", seed=3)
    again = cmkd.DataModule.from_arrays(torch.from_numpy(fac.x), fac.y, seed=3)
    assert both.modality == "fac" and again.modality == "x" and both.classes == fac.classes
    # Same labels and seed, same stratified split, whatever the arrays are called
    assert torch.equal(both.sets["test"].y, again.sets["test"].y)
    assert torch.equal(both.sets["test"].x, again.sets["test"].x)
    # Modalities of one call are paired row by row: the same ids in the same split
    mor_dm = both.with_modality("mor")
    assert np.array_equal(
        both.prepared.rows("fac", "val").ids, mor_dm.prepared.rows("mor", "val").ids
    )
    assert both.prepared.rows("fac", "val").ids[0].startswith("fac+mor:")
    given = cmkd.DataModule.from_arrays(
        fac.x, fac.y, splits={"train": np.arange(0, 2000, 2), "test": np.arange(1, 2000, 2)}
    )
    assert [len(given.sets[s]) for s in ("train", "val", "test")] == [1000, 0, 1000]
    with pytest.raises(cmkd.CmkdError, match="overlap"):
        cmkd.DataModule.from_arrays(fac.x, fac.y, splits={"train": [0, 1], "test": [1, 2]})
    with pytest.raises(cmkd.CmkdError, match="integer labels"):
        cmkd.DataModule.from_arrays(fac.x, fac.y.astype(float))
    with pytest.raises(cmkd.CmkdError, match="choose this module's"):
        cmkd.DataModule.from_arrays({"fac": fac.x, "mor": mor.x}, fac.y)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, as_dict: bool, first_id: int = 0) -> None:
        self.x, self.y, self.as_dict, self.first_id = x, y, as_dict, first_id

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        if self.as_dict:
            return {
                "fac": torch.from_numpy(self.x[i]),
                "label": int(self.y[i]),
                "id": f"s{self.first_id + i}",
            }
        return torch.from_numpy(self.x[i]), int(self.y[i])


def test_data_from_a_torch_dataset_of_tuples_or_dicts(data_root) -> None:
    fac = cmkd.DataModule.from_source("mfeat", "fac", options={"views": ["fac"]}).prepared
    x, y = fac.samples["fac"].x, fac.samples["fac"].y
    tuples = cmkd.DataModule.from_dataset(_Pairs(x, y, False), seed=1)
    arrays = cmkd.DataModule.from_arrays(x, y, seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(tuples.sets[split].x, arrays.sets[split].x), split
    # A test set given as a Dataset is kept whole; val is drawn from the training set
    dicts = cmkd.DataModule.from_dataset(
        _Pairs(x[:1500], y[:1500], True),
        test=_Pairs(x[1500:], y[1500:], True, 1500),
        val_fraction=0.1,
    )
    assert dicts.modality == "fac" and len(dicts.sets["test"]) == 500
    assert len(dicts.sets["val"]) == 150 and len(dicts.sets["train"]) == 1350
    assert set(dicts.prepared.rows("fac", "test").ids) == {f"s{i}" for i in range(1500, 2000)}
    with pytest.raises(cmkd.CmkdError, match="dict without a 'label'"):
        cmkd.DataModule.from_dataset([{"fac": x[0]}])


def test_classifier_task_trains_tests_and_predicts_with_a_plain_trainer(data_root) -> None:
    dm = cmkd.DataModule.from_config(MFEAT, "fac", seed=0)
    task = cmkd.ClassifierTask.for_data(dm, MLP, OptimConfig(epochs=4))
    trainer = _trainer(4)
    trainer.fit(task, dm)
    # 10 classes (chance 10 %); cmkd train on the same view passes 80 % in a few epochs
    assert trainer.test(task, dm, verbose=False)[0]["test/acc"] > 0.8
    probabilities = torch.cat(trainer.predict(task, dm))
    assert probabilities.shape == (len(dm.sets["test"]), 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(probabilities)))
    assert isinstance(task(dm.sets["test"].x[:3]), cmkd.ModelOutput)


def test_use_fast_paths_readies_a_task_as_the_cli_does(data_root) -> None:
    from cmkd.models.matmul_weight_grad import MatmulWeightGradConv2d
    from cmkd.precision import resolve_precision

    ms = cmkd.DataModule.from_source("eurosat_paired", "ms", batch_size=8, seed=0)
    task = cmkd.ClassifierTask.for_data(ms, model="resnet18")
    run = cmkd.RunConfig(accelerator="cpu")
    precision, channels_last, matmul = cmkd.use_fast_paths(task, run)
    assert precision == resolve_precision("auto", "cpu", task) and channels_last and matmul
    convs = [m for m in task.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is MatmulWeightGradConv2d for m in convs)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    plain = cmkd.ClassifierTask.for_data(ms, model="resnet18")
    off = replace(run, precision="32-true", channels_last=False, matmul_weight_grad=False)
    assert cmkd.use_fast_paths(plain, off) == ("32-true", False, False)
    assert all(type(m) is nn.Conv2d for m in plain.model.modules() if isinstance(m, nn.Conv2d))


def _weights(module: cmkd.ClassifierTask) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.model.state_dict().items()}


def test_tasks_start_from_the_recipes_weights_for_one_seed(data_root) -> None:
    prepared = prepare_data(MFEAT, 3)
    recipe = cmkd.ClassifierTask(**module_args(MLP, OptimConfig(), MFEAT, prepared, "pix", 3))
    dm = cmkd.DataModule.from_config(MFEAT, "pix", seed=3)
    task = cmkd.ClassifierTask.for_data(dm, MLP)
    teacher = cmkd.ClassifierTask.for_data(dm.with_modality("fac"), MLP)
    # FitNet on embeddings owns a trained regressor: built on its own stream, it must not
    # move the student's initialisation.
    student = cmkd.DistillTask.for_data(
        dm,
        teacher,
        dm.with_modality("fac"),
        terms=["kd", {"name": "fitnet", "params": {"on": "embedding"}}],
        model=MLP,
    )
    for name, other in {"for_data": task, "distill": student}.items():
        for key, value in _weights(recipe).items():
            assert torch.equal(_weights(other)[key], value), f"{name}: {key}"
    elsewhere = cmkd.ClassifierTask.for_data(dm, MLP, seed=4)
    assert not all(torch.equal(_weights(elsewhere)[k], v) for k, v in _weights(recipe).items())


def test_distill_from_a_checkpoint_with_each_kind_of_pairing(data_root, quiet_run) -> None:
    train_classifier(MFEAT, MLP, OptimConfig(epochs=1), quiet_run, "fac", 0)
    dm = cmkd.DataModule.from_config(MFEAT, "pix", seed=0)
    run_folder = str(quiet_run.output_dir) + "/mfeat-fac-mlp/seed0"
    t_model, _ = cmkd.load_model(run_folder)
    # The bank defaults to the checkpoint's own training split: the student's twins here
    task = cmkd.DistillTask.for_data(
        dm, run_folder, terms=["kd"], model=MLP, optim=OptimConfig(epochs=1)
    )
    assert task.hparams.teacher_checkpoint == str(Path(run_folder).resolve())
    assert np.array_equal(task.teacher_labels.numpy(), dm.prepared.rows("pix", "train").y)
    _trainer(1).fit(task, dm)
    for key, value in t_model.state_dict().items():  # the frozen teacher did not move
        torch.testing.assert_close(task.teacher.state_dict()[key], value)
    fac = dm.with_modality("fac")
    class_random = cmkd.DistillTask.for_data(dm, t_model, fac, pairing="class_random", model=MLP)
    rows = class_random.pairing.table_for(0)
    assert np.array_equal(
        fac.prepared.rows("fac", "train").y[rows], dm.prepared.rows("pix", "train").y
    )
    own = cmkd.DistillTask.for_data(dm, t_model, fac, pairing=class_random.pairing, model=MLP)
    assert own.pairing is class_random.pairing and own.configure_callbacks() == []
    dynamic = cmkd.PairingConfig("class_random", dynamic=True, schedule=[1])
    with_dynm = cmkd.DistillTask.for_data(
        dm, t_model, fac, pairing=dynamic, model=MLP, optim=OptimConfig(epochs=2)
    )
    (callback,) = with_dynm.configure_callbacks()
    assert type(callback).__name__ == "DynamicMatching" and callback.epochs == [1]


def test_teacher_checks_name_the_problem(data_root) -> None:
    dm = cmkd.DataModule.from_config(MFEAT, "pix", seed=0)
    net = cmkd.create_network("mlp", in_chans=216, num_classes=10, hidden=[16])
    with pytest.raises(cmkd.CmkdError, match="needs teacher_data"):
        cmkd.DistillTask.for_data(dm, net, model=MLP)
    # A bank split another way holds the student's test samples: refused
    other = cmkd.DataModule.from_config(MFEAT, "fac", seed=1)
    with pytest.raises(cmkd.CmkdError, match="student's (val|test) split"):
        cmkd.DistillTask.for_data(dm, net, other, model=MLP)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(216, 10))
    with pytest.raises(cmkd.CmkdError, match="adapt_network"):
        cmkd.DistillTask.for_data(dm, plain, dm.with_modality("fac"), model=MLP)
    five = cmkd.adapt_network(nn.Sequential(nn.Flatten(), nn.Linear(240, 5)), classifier="1")
    with pytest.raises(cmkd.CmkdError, match="gives 5 class scores, but the data has 10"):
        cmkd.ClassifierTask.for_data(dm, five)


class _Mine(nn.Module):
    """A user's convolutional network, unaware of cmkd."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_adapter_reads_the_named_parts_without_changing_the_module() -> None:
    mine = _Mine(3)
    net = cmkd.adapt_network(mine, classifier="fc", features="body")
    x = torch.randn(4, 3, 16, 16)
    out = net(x)
    torch.testing.assert_close(out.logits, mine(x))
    torch.testing.assert_close(out.embedding, mine.body(x).mean(dim=(2, 3)))
    assert out.feature_map.shape == (4, 8, 8, 8) and net.classifier is mine.fc
    assert (net.embedding_dim, net.num_classes, net.feature_channels) == (8, 10, None)
    net.probe(x)
    assert net.feature_channels == 8
    assert not mine.fc._forward_hooks and not mine.body._forward_hooks  # removed after use
    fn = cmkd.adapt_network(mine, outputs=lambda m, x: (m(x), m.body(x).mean(dim=(2, 3)), None))
    torch.testing.assert_close(fn(x).logits, out.logits)
    with pytest.raises(cmkd.CmkdError, match="no submodule 'head'"):
        cmkd.adapt_network(mine, classifier="head")
    with pytest.raises(cmkd.CmkdError, match="classifier="):
        cmkd.adapt_network(mine)


def test_your_module_as_student_and_teacher_and_loaded_back(data_root, tmp_path) -> None:
    ms = cmkd.DataModule.from_source("eurosat_paired", "ms", batch_size=64)
    rgb = ms.with_modality("rgb")
    teacher = cmkd.ClassifierTask.for_data(
        ms, cmkd.adapt_network(_Mine(13), classifier="fc", features="body")
    )
    student = cmkd.DistillTask.for_data(
        rgb,
        teacher,
        ms,
        terms=["kd", "fitnet", "soft_classifier"],  # feature maps; the teacher's classifier
        model=cmkd.adapt_network(_Mine(3), classifier="fc", features="body"),
        optim=OptimConfig(epochs=1),
    )
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(student, rgb)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    assert student.hparams.network["backbone"] == "custom:_Mine"
    with pytest.raises(cmkd.CmkdError, match="your own network"):
        cmkd.load_model(path)
    loaded, hparams = cmkd.load_model(
        path, network=cmkd.adapt_network(_Mine(3), classifier="fc", features="body")
    )
    x = rgb.sets["test"].x[:4]
    student.eval()
    torch.testing.assert_close(loaded(x).logits, student(x).logits)
    # Data handed in from Python records no source: the CLI's evaluate says so in one line
    arrays = cmkd.DataModule.from_arrays(ms.sets["train"].x.float().numpy(), ms.sets["train"].y)
    task = cmkd.ClassifierTask.for_data(arrays, "small_cnn")
    trainer = _trainer(1)
    trainer.fit(task, arrays)
    trainer.save_checkpoint(tmp_path / "arrays.ckpt")
    assert task.hparams.data is None
    with pytest.raises(cmkd.CmkdError, match="given from Python"):
        evaluate_checkpoint(str(tmp_path / "arrays.ckpt"))


def test_data_from_a_checkpoint_is_the_runs_split(data_root, quiet_run) -> None:
    run = replace(quiet_run, name="split")
    result = train_classifier(MFEAT, MLP, OptimConfig(epochs=1), run, "fac", 5)
    dm = cmkd.DataModule.from_checkpoint(result["checkpoint"])
    assert (dm.modality, dm.seed, dm.config.source) == ("fac", 5, "mfeat")
    expected = prepare_data(MFEAT, 5).rows("fac", "test").ids
    assert np.array_equal(dm.prepared.rows("fac", "test").ids, expected)
