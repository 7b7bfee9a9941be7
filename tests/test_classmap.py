"""Class maps (issue 18): a teacher of other classes distils over the classes both share.

The mapped KD against a computation done by hand (plain `math`, no library code), the map's
one-line errors, the covered view of a batch, and pairing that never crosses unmapped classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cmkd
from cmkd.classmap import ClassMap, MappedTeacher
from cmkd.data.normalize import Standardize
from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.losses.relation import rkd_distance_loss
from cmkd.models.model import StandardizedNetwork
from cmkd.models.outputs import ModelOutput
from cmkd.pairing import PairList, build_pairing
from cmkd.pairing.strategies import DynamicPairing, FixedPairing

TEACHER = ["a", "b", "c", "d"]
STUDENT = ["X", "Y", "Z"]
MAP = {"a": "X", "b": "X", "c": "Y", "d": None}  # d unused; Z uncovered

# Teacher samples, one per teacher class: the inputs ARE the teacher's logits (see _Logits).
T_X = [[2.0, 0.5, -1.0, 0.3], [0.1, 1.5, 0.2, -0.7], [-0.5, 0.0, 1.2, 0.9], [0.0, 0.0, 0.0, 3.0]]
# Student training samples of classes X, Y, Z, X, Y: the inputs are the student's logits.
S_X = [[1.0, -0.2, 0.4], [0.3, 0.8, -1.0], [0.0, 0.1, 2.0], [0.7, 0.2, -0.3], [-0.4, 0.9, 0.5]]
S_Y = [0, 1, 2, 0, 1]


class _Logits(nn.Module):
    """A network whose logits and embedding are its input (so a test sets them by hand)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.embedding_dim, self.num_classes = k, k
        self.classifier = nn.Linear(k, k)  # unused; what cmkd's networks carry

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(x.float(), x.float(), None)


def _kl(q: list[float], p: list[float]) -> float:
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))


def _normalised(weights: list[float]) -> list[float]:
    return [w / sum(weights) for w in weights]


def _hand_mapped_kd(teacher: list[float], student: list[float], t: float) -> float:
    """KD over the map by hand: the teacher's mass per covered class (X <- a + b, Y <- c; d
    dropped) softened as m ** (1/T) and renormalised; the student's softmax over X, Y at T."""
    m_x, m_y = math.exp(teacher[0]) + math.exp(teacher[1]), math.exp(teacher[2])
    q = _normalised([m_x ** (1 / t), m_y ** (1 / t)])
    p = _normalised([math.exp(student[0] / t), math.exp(student[1] / t)])
    return t * t * _kl(q, p)


def _task(terms, pairing=None, **kw) -> cmkd.DistillTask:
    """A DistillTask between the hand-set networks: teacher bank = the four teacher samples,
    student train = the five student samples (classes X, Y, Z, X, Y)."""
    teacher_x = np.array(T_X, dtype=np.float32)
    teacher_data = cmkd.DataModule.from_arrays(
        np.concatenate([teacher_x, teacher_x]),
        np.array([0, 1, 2, 3, 0, 1, 2, 3]),
        ids=[f"t{i}" for i in range(8)],
        classes=TEACHER,
        splits={"train": [0, 1, 2, 3], "val": [4, 5], "test": [6, 7]},
    )
    student_x = np.array(S_X * 3, dtype=np.float32)
    data = cmkd.DataModule.from_arrays(
        student_x,
        np.array(S_Y * 3),
        ids=[f"s{i}" for i in range(15)],
        classes=STUDENT,
        splits={"train": range(5), "val": range(5, 10), "test": range(10, 15)},
        batch_size=5,
    )
    task = cmkd.DistillTask.for_data(
        data,
        teacher=cmkd.adapt_network(_Logits(4), outputs=lambda m, x: (x, x, None)),
        teacher_data=teacher_data,
        terms=terms,
        pairing=pairing or FixedPairing(np.array([1, 2, -1, 0, 2])),
        model=cmkd.adapt_network(_Logits(3), outputs=lambda m, x: (x, x, None)),
        class_map=MAP,
    )
    # The student's logits are its raw inputs: no standardisation in between.
    task.model = StandardizedNetwork(task.model.network, Standardize.identity(3))
    return task, data.sets["train"].batch(range(5))


@pytest.mark.parametrize("cached", [False, True])
def test_mapped_kd_equals_the_hand_computation(cached: bool) -> None:
    """Students X, Y, Z, X, Y taught by teacher samples b, c, none (Z is uncovered), a, c: KD
    is the mean over the four covered samples of T^2 KL over {X, Y}."""
    t = 2.0
    task, batch = _task([cmkd.TermConfig("kd", 1.0, {"temperature": t})])
    if cached:
        task.on_fit_start()  # the teacher cache, computed through the map
        assert task.cache.logits.shape == (3, 2)  # the bank: a, b, c (d unused); covered X, Y
    losses = task.training_losses(batch)
    taught = [(1, 0), (2, 1), (0, 3), (2, 4)]  # (teacher sample, student sample)
    expected = sum(_hand_mapped_kd(T_X[t_row], S_X[s_row], t) for t_row, s_row in taught) / 4
    assert losses["kd"].item() == pytest.approx(expected, rel=1e-5)
    # CE still sees every sample, the uncovered Z too.
    soft = [_normalised([math.exp(v) for v in s]) for s in S_X]
    ce = sum(-math.log(p[y]) for p, y in zip(soft, S_Y, strict=True)) / 5
    assert losses["ce"].item() == pytest.approx(0.5 * ce, rel=1e-5)


def test_relation_terms_see_only_covered_samples() -> None:
    """RKD's distances over the covered samples alone (Z's would change them)."""
    task, batch = _task([cmkd.TermConfig("rkd", 1.0, {"angle_weight": 0.0})])
    value = task.training_losses(batch)["rkd/distance"].item()
    covered = [0, 1, 3, 4]
    s = torch.tensor([S_X[i] for i in covered])
    t = torch.tensor([T_X[1], T_X[2], T_X[0], T_X[2]])
    assert value == pytest.approx(25.0 * rkd_distance_loss(s, t).item(), rel=1e-5)
    with_z = rkd_distance_loss(torch.tensor(S_X), torch.tensor([T_X[i] for i in (1, 2, 3, 0, 2)]))
    assert value != pytest.approx(25.0 * with_z.item(), rel=1e-3)


def test_batches_without_two_covered_samples_train_on_ce_alone() -> None:
    task, _ = _task([cmkd.TermConfig("kd", 1.0)])
    data_z = {"x": torch.tensor([S_X[2]]), "label": torch.tensor([2]), "index": torch.tensor([2])}
    assert set(task.training_losses(data_z)) == {"ce"}


def test_mapped_teacher_logits() -> None:
    """Many to one: logsumexp of the mapped logits (softmax = the teacher's mass per covered
    class, renormalised); one to one: the teacher's own logits, exactly."""
    cmap = ClassMap.build(MAP, TEACHER, STUDENT)
    z = torch.tensor(T_X)
    mapped = cmap.teacher_logits(z)
    for row, logits in enumerate(T_X):
        mass = _normalised([math.exp(logits[0]) + math.exp(logits[1]), math.exp(logits[2])])
        assert mapped[row].softmax(0).tolist() == pytest.approx(mass, rel=1e-6)
    one_to_one = ClassMap.build({"a": "Z", "c": "X"}, TEACHER, STUDENT)
    assert one_to_one.covered == ("X", "Z")  # student order
    assert torch.equal(one_to_one.teacher_logits(z), z[:, [2, 0]])
    s = torch.tensor(S_X)
    assert torch.equal(one_to_one.student_logits(s), s[:, [0, 2]])


def test_mapped_teacher_keeps_the_teachers_state_dict_keys() -> None:
    teacher = StandardizedNetwork(nn.Linear(4, 4), Standardize.identity(4))
    mapped = MappedTeacher(teacher, ClassMap.build(MAP, TEACHER, STUDENT))
    assert list(mapped.state_dict()) == list(teacher.state_dict())


def test_view_renumbers_labels_into_the_covered_classes() -> None:
    cmap = ClassMap.build({"a": "Z", "c": "X"}, TEACHER, STUDENT)
    labels = torch.tensor([2, 1, 0, 2])
    batch = {"x": torch.arange(4.0), "label": labels, "index": torch.tensor([5, 6, 7, 8])}
    keep = cmap.covered_mask(labels, rows=torch.tensor([0, 3, 1, -1]))
    out, sub = cmap.view(ModelOutput(torch.eye(4, 3), torch.eye(4), None), batch, keep)
    assert keep.tolist() == [True, False, True, False]  # Y uncovered; the last has no teacher
    assert sub["label"].tolist() == [1, 0] and sub["index"].tolist() == [5, 7]
    assert out.logits.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # eye rows 0, 2 at columns X, Z
    assert out.embedding.shape == (2, 4)


# --- the map's errors ---------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_map_errors_name_the_class_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("a: X\nforrest: Y\n")
    with pytest.raises(CmkdError) as err:
        ClassMap.build(str(path), TEACHER, STUDENT)
    assert "'forrest' is not a teacher class" in _one_line(err) and str(path) in str(err.value)
    path.write_text("a: X\nb: Forest\n")
    with pytest.raises(CmkdError) as err:
        ClassMap.build(str(path), TEACHER, STUDENT)
    text = _one_line(err)
    assert "'b' maps to 'Forest', which is not a student class" in text and str(path) in text
    with pytest.raises(CmkdError, match="inline|distill.class_map") as err:
        ClassMap.build({"q": "X"}, TEACHER, STUDENT)
    assert "'q' is not a teacher class" in _one_line(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [X\n", "is not valid YAML (line"),
        ("- a\n- b\n", "must be a mapping of teacher class: student class"),
        ("a: null\nb: null\n", "maps no teacher class to a student class"),
        ("a: {X: 1}\n", "entry 'a'"),
    ],
)
def test_malformed_map_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(text)
    with pytest.raises(CmkdError) as err:
        ClassMap.build(str(path), TEACHER, STUDENT)
    assert message in _one_line(err) and str(path) in str(err.value)


def test_missing_map_file_and_missing_map(tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match=r"class map file .*nope.yaml does not exist"):
        ClassMap.build(str(tmp_path / "nope.yaml"), TEACHER, STUDENT)
    with pytest.raises(CmkdError, match="give a class map"):
        ClassMap.build(None, TEACHER, STUDENT)
    assert ClassMap.build(None, STUDENT, STUDENT) is None  # same classes: nothing to map


# --- pairing never crosses unmapped classes -------------------------------------------------


def _banks(seed: int = 0) -> tuple[Samples, Samples, ClassMap]:
    """30 student rows over X, Y, Z and 40 teacher rows over a, b, c, d, relabelled."""
    rng = np.random.default_rng(seed)
    student = Samples(
        np.zeros((30, 1)), rng.integers(0, 3, 30), [f"s{i}" for i in range(30)], STUDENT
    )
    teacher = Samples(np.zeros((40, 1)), np.arange(40) % 4, [f"t{i}" for i in range(40)], TEACHER)
    cmap = ClassMap.build(MAP, TEACHER, STUDENT)
    return student, teacher, cmap


def _check_within_mapped_classes(table, student, teacher, cmap) -> None:
    relabelled = cmap.teacher_samples(teacher)
    original = {sid: TEACHER[y] for sid, y in zip(teacher.ids, teacher.y, strict=True)}
    for row, t_row in enumerate(table):
        s_class = STUDENT[student.y[row]]
        if s_class == "Z":
            assert t_row == -1
            continue
        assert t_row >= 0
        assert MAP[original[relabelled.ids[t_row]]] == s_class  # never d, never another class


@pytest.mark.parametrize("strategy", ["class_random", "unpaired"])
def test_strategies_pair_within_mapped_classes(strategy: str) -> None:
    student, teacher, cmap = _banks()
    bank = cmap.teacher_samples(teacher)
    assert set(bank.y.tolist()) == {0, 1} and len(bank) == 30  # d's 10 rows dropped
    cfg = cmkd.PairingConfig(strategy)
    pairing = build_pairing(cfg, student, bank, seed=3, covered=cmap.covered_labels)
    for epoch in range(5):
        table = pairing.table_for(epoch)
        rows = torch.arange(30)
        assert pairing.teacher_rows(rows, epoch).tolist() == table.tolist()
        if strategy == "class_random":
            _check_within_mapped_classes(table, student, teacher, cmap)
        else:  # the zip ignores labels by design, but uncovered rows still get no teacher
            assert (table[student.y == 2] == -1).all() and (table[student.y != 2] >= 0).all()


def test_dynm_rematches_within_mapped_classes_and_keeps_uncovered_rows_unpaired() -> None:
    student, teacher, cmap = _banks(1)
    bank = cmap.teacher_samples(teacher)
    cfg = cmkd.PairingConfig("class_random", dynamic=True)
    pairing = build_pairing(cfg, student, bank, seed=0, covered=cmap.covered_labels)
    assert isinstance(pairing, DynamicPairing)
    gen = torch.Generator().manual_seed(0)
    teacher_logits = cmap.teacher_logits(torch.randn(len(bank), 4, generator=gen))
    student_logits = cmap.student_logits(torch.randn(30, 3, generator=gen))
    pairing.rematch(student_logits, teacher_logits, student.y, bank.y, 3.0)
    _check_within_mapped_classes(pairing.table, student, teacher, cmap)


def test_matcher_pairs_within_mapped_classes_and_lists_uncovered_students(tmp_path) -> None:
    from cmkd.pairing import match

    student, teacher, cmap = _banks(2)
    bank = cmap.teacher_samples(teacher)
    cfg = cmkd.MatchConfig("class_random")
    pairs = match("class_random", None, bank, student, cfg, 0, cmkd.RunConfig(), cmap)
    table = pairs.to_table(student.ids, bank.ids)
    _check_within_mapped_classes(table, student, teacher, cmap)
    pairs.save(tmp_path / "pairs.json")
    again = PairList.load(tmp_path / "pairs.json")
    assert np.array_equal(again.to_table(student.ids, bank.ids), table)
    assert again.class_map == {"a": "X", "b": "X", "c": "Y"}
    summary = again.summary()
    z_line = next(line for line in summary.splitlines() if line.startswith("Z "))
    assert "uncovered" in z_line and str(int((student.y == 2).sum())) in z_line
    assert "a, b" in next(line for line in summary.splitlines() if line.startswith("X "))


def test_pair_list_refuses_coverage_that_contradicts_its_map() -> None:
    def pairs(teacher_label: int, teacher_id: str) -> PairList:
        return PairList(["s0"], [teacher_id], STUDENT, [0], [teacher_label], "m", None, None,
                        {"a": "X"})  # fmt: skip

    with pytest.raises(
        CmkdError, match="'s0' of class 'X' has no teacher, but the class map covers"
    ):
        pairs(-1, "")
    with pytest.raises(
        CmkdError, match="'s0' of class 'Z' has a teacher, but no teacher class maps"
    ):
        PairList(["s0"], ["t0"], STUDENT, [2], [2], "m", None, None, {"a": "X"})
    with pytest.raises(CmkdError, match="outside its 3 classes"):  # no map: -1 is refused
        PairList(["s0"], [""], STUDENT, [0], [-1], "m")


# --- on real data: UC Merced teacher, EuroSAT students --------------------------------------

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MAP = REPO / "configs" / "class_maps" / "ucmerced_to_eurosat.yaml"
TINY = cmkd.ModelConfig(options={"widths": [8, 16]})


def test_shipped_class_map_fits_the_real_class_lists(data_root: Path) -> None:
    from cmkd.data.sources import load_source

    teacher = load_source("ucmerced", data_root, size=8)["rgb"].classes
    student = load_source("eurosat_ms", data_root)["ms"].classes
    cmap = ClassMap.build(str(SHIPPED_MAP), teacher, student)
    assert cmap.covered == ("Forest", "Highway", "Industrial", "Residential", "River")
    assert cmap.teachers_of("Residential") == [
        "denseresidential", "mediumresidential", "mobilehomepark", "sparseresidential",
    ]  # fmt: skip
    assert len(cmap.unused) == 12 and set(cmap.unused) | set(cmap.mapping) == set(teacher)


@pytest.fixture(scope="module")
def ucm_teacher(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> str:
    from cmkd.recipes import train_classifier

    data = cmkd.DataConfig(source="ucmerced", options={"size": 64})
    run = cmkd.RunConfig(
        output_dir=str(tmp_path_factory.mktemp("runs")), accelerator="cpu", progress_bar=False
    )
    return train_classifier(data, TINY, cmkd.OptimConfig(epochs=1), run, "rgb", 0)["checkpoint"]


def test_cli_refuses_a_map_naming_an_unknown_class(ucm_teacher, tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "map.yaml"
    bad.write_text("forest: Forest\nriver: Rivers\n")
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "cmkd.cli", "distill", "--modality", "ms",
         "--data.source", "eurosat_ms", "--distill.teacher", ucm_teacher,
         "--distill.class_map", str(bad), "--run.output_dir", str(runs)],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("cmkd: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr
    assert "'river' maps to 'Rivers', which is not a student class" in errors[0]
    assert str(bad) in errors[0] and not runs.exists()


def test_class_mean_control_over_the_map(ucm_teacher, quiet_run) -> None:
    """The control's target for a covered class is the mean of the mapped teacher outputs over
    the teacher samples of every teacher class mapped to it (Residential: four classes)."""
    from lightning.pytorch.callbacks import Callback

    from cmkd.recipes import distill_student

    class Capture(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == 0 and trainer.current_epoch == 0:
                self.labels = module.class_map.to_covered(batch["label"])
                self.target = module.teacher_outputs(batch).logits.clone()
                self.cache = module.cache.logits.clone()
                self.teacher_labels = module.class_map.to_covered(module.teacher_labels)

    capture = Capture()
    distill = cmkd.DistillConfig(
        teacher=ucm_teacher,
        class_map=str(SHIPPED_MAP),
        pairing=cmkd.PairingConfig("class_random"),
        teacher_target="class_mean",
    )
    data = cmkd.DataConfig(source="eurosat_ms", batch_size=64)
    result = distill_student(
        data, TINY, cmkd.OptimConfig(epochs=1), quiet_run, distill, "ms", 0, callbacks=(capture,)
    )
    assert result["class_map"]["uncovered"] == [
        "AnnualCrop", "HerbaceousVegetation", "Pasture", "PermanentCrop", "SeaLake",
    ]  # fmt: skip
    assert capture.cache.shape[1] == 5  # the teacher cache holds covered-class logits
    covered = capture.labels[capture.labels >= 0]
    assert len(capture.target) == len(covered) > 0  # only the covered samples' targets
    cache, t_labels = capture.cache.numpy(), capture.teacher_labels.numpy()
    reference = np.stack([cache[t_labels == y].mean(0) for y in covered.numpy()])
    np.testing.assert_allclose(capture.target.numpy(), reference, rtol=1e-5, atol=1e-6)
