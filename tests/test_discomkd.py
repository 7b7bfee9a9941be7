"""DisCoM-KD: the loss pieces against hand-computed values, unpaired multi-modal data, the
exported students, and end-to-end runs on small real subsets."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.data.datamodule import ModalityDataset
from cmkd.data.multimodal import (
    CyclingShuffle,
    ModalitySpec,
    MultiModalDataModule,
    epoch_size,
    first_batch,
    prepare_modalities,
    with_fused,
)
from cmkd.errors import CmkdError
from cmkd.losses.logits import grad_reverse
from cmkd.methods.discomkd import (
    DisComConfig,
    DisComKDModule,
    evaluate_student,
    grl_lambda,
    modality_targets,
    orthogonality_loss,
    train_discomkd,
)
from cmkd.models.discomkd import DisComStudent, export_student, load_student

MLP = ModelConfig(backbone="mlp", options={"hidden": [32, 16]})
MFEAT = DataConfig(source="mfeat", val_fraction=0.1, test_fraction=0.2)
K10 = [str(d) for d in range(10)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks on a shared 2-core machine: one thread avoids oversubscription (40x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _module(authors: bool = False, m: int = 2, latent: int = 8) -> DisComKDModule:
    torch.manual_seed(0)
    networks = {f"v{i}": {"backbone": "mlp", "in_chans": 5 + i, "options": {}} for i in range(m)}
    cfg = {"latent_dim": latent, "authors_soft_targets": authors, "augment": False}
    optim = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}
    return DisComKDModule(networks, K10[:3], optim, cfg)


def _batch(module: DisComKDModule, sizes: tuple[int, ...]) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        name: {
            name: torch.randn(n, spec["in_chans"], generator=g),
            "label": torch.randint(0, 3, (n,), generator=g),
        }
        for (name, spec), n in zip(module.hparams.networks.items(), sizes, strict=True)
    }


# --- loss pieces ------------------------------------------------------------------------------


def test_gradient_reversal_negates_and_scales():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)  # identity forward
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.3, -0.6, -0.9]))


def test_grl_schedules():
    assert grl_lambda(0.5, "constant", 0.7) == 0.5
    assert grl_lambda(1.0, "dann", 0.0) == 0.0
    assert grl_lambda(2.0, "dann", 1.0) == pytest.approx(2 * (2 / (1 + math.exp(-10)) - 1))
    with pytest.raises(CmkdError, match="grl_schedule"):
        grl_lambda(1.0, "linear", 0.5)


def test_adversarial_term_reverses_the_encoders_gradient():
    """The discriminator learns the modality, the invariant encoder receives -lambda times the
    gradient it would get without the reversal."""
    torch.manual_seed(0)
    module = _module()
    batch = _batch(module, (4, 4))
    grads = []
    for factor in (0.0, 1.0):
        module.cfg = replace(module.cfg, grl_factor=factor)
        module.zero_grad()
        module.training_losses(batch)["adv"].backward()
        grads.append(module.students["v0"].proj[0].weight.grad.clone())
        disc = module.discriminator.weight.grad.clone()
    assert torch.count_nonzero(grads[0]) == 0  # factor 0: nothing flows back
    module.cfg = replace(module.cfg, grl_factor=-1.0)  # no reversal: plain gradient
    module.zero_grad()
    module.training_losses(batch)["adv"].backward()
    plain = module.students["v0"].proj[0].weight.grad
    assert torch.allclose(grads[1], -plain, atol=1e-7)
    assert torch.allclose(module.discriminator.weight.grad, disc)  # D itself is not reversed


def test_orthogonality_loss_by_hand():
    e1, e2 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    e3 = torch.tensor([[0.0, 0.0, -5.0]])
    assert orthogonality_loss(e1, e2, e3).item() == 0.0
    # cos([1,0],[1,1]) = 1/sqrt(2); cos([1,0],[-1,0]) = -1 counts as 1 (not orthogonal).
    z_inf = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    z_irr = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    z_inv = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
    expected = (2**-0.5 + 0) / 2 + (1 + 1) / 2
    assert orthogonality_loss(z_inf, z_irr, z_inv).item() == pytest.approx(expected)


def test_modality_targets_are_integers():
    t = modality_targets([2, 3, 1])
    assert t.dtype == torch.long
    assert t.tolist() == [0, 0, 1, 1, 1, 2]
    soft = modality_targets([2, 1], authors_soft_targets=True)
    assert soft.dtype == torch.float32 and soft.tolist() == [[1, 1], [1, 1], [0, 0]]


def test_terms_match_a_hand_computation():
    module = _module(m=3).eval()  # eval: BatchNorm uses fixed statistics, so parts() repeat
    batch = _batch(module, (3, 2, 4))
    module.train(False)
    terms = module.training_losses(batch)
    inv, inf, irr, logits, y, t = [], [], [], [], [], []
    for m, name in enumerate(module.names):
        a, b, c = module.students[name].parts(batch[name][name])
        inv.append(a)
        inf.append(b)
        irr.append(c)
        logits.append(module.students[name](batch[name][name]).logits)
        y.append(batch[name]["label"])
        t += [m] * len(a)
    inv, inf, irr, logits, y = map(torch.cat, (inv, inf, irr, logits, y))
    t = torch.tensor(t)

    def nll(z, target):  # cross-entropy written out
        return -(z.log_softmax(1)[torch.arange(len(target)), target]).mean()

    assert terms["cl"].item() == pytest.approx(nll(logits, y).item(), rel=1e-6)
    aux = nll(module.aux(inv), y) + nll(module.aux(inf), y)
    assert terms["aux"].item() == pytest.approx(aux.item(), rel=1e-6)
    mod = (nll(module.mod_inf(inf), t) * len(t) + nll(module.mod_irr(irr), t) * len(t)) / (
        2 * len(t)
    )
    assert terms["mod"].item() == pytest.approx(mod.item(), rel=1e-6)
    assert terms["adv"].item() == pytest.approx(nll(module.discriminator(inv), t).item(), rel=1e-6)
    cos = F.cosine_similarity
    orth = cos(inf, irr).abs().mean() + cos(inf, inv).abs().mean()
    assert terms["orth"].item() == pytest.approx(orth.item(), rel=1e-6)


def test_authors_soft_targets_only_behind_the_switch():
    """With the switch, the second modality's all-zero targets contribute nothing and the
    first's all-ones give -sum_c log p_c: not a modality classifier."""
    module = _module(authors=True).eval()
    batch = _batch(module, (3, 2))
    adv = module.training_losses(batch)["adv"]
    z = module.students["v0"].parts(batch["v0"]["v0"])[0]
    log_p = module.discriminator(z).log_softmax(1)
    assert adv.item() == pytest.approx((-log_p.sum() / 5).item(), rel=1e-6)
    assert not _module().cfg.authors_soft_targets  # off by default


def test_shared_heads_need_one_latent_width():
    networks = {
        "a": {"backbone": "mlp", "in_chans": 4, "options": {"hidden": [16]}},
        "b": {"backbone": "mlp", "in_chans": 4, "options": {"hidden": [32]}},
    }
    optim = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}
    with pytest.raises(CmkdError, match="latent_dim"):
        DisComKDModule(networks, K10, optim, {})
    module = DisComKDModule(networks, K10, optim, {"latent_dim": 8})
    assert module.students["a"].spec_enc.dim == module.students["b"].spec_enc.dim == 16


# --- data -------------------------------------------------------------------------------------


def test_cycling_shuffle():
    s = CyclingShuffle(4, 10, seed=3, stream=0)
    order = list(s)
    assert len(order) == 10 and sorted(order[:4]) == [0, 1, 2, 3] == sorted(order[4:8])
    assert list(s) == order  # repeatable
    s.set_epoch(1)
    assert list(s) != order
    assert list(CyclingShuffle(4, 10, seed=3, stream=1)) != order  # modalities independent
    sub = list(CyclingShuffle(50, 7, seed=0))
    assert len(set(sub)) == 7
    assert epoch_size([30, 12], "largest", 8) == 30 and epoch_size([30, 12], "smallest", 8) == 12
    assert epoch_size([17, 5], "largest", 8) == 18  # no last batch of one (BatchNorm)


def test_mfeat_views_share_one_split_and_shuffle_independently(data_root):
    specs = [ModalitySpec("fou", MFEAT, MLP), ModalitySpec("zer", MFEAT, MLP)]
    prepared = prepare_modalities(specs, seed=0)
    for split in ("train", "val", "test"):
        a, b = (prepared[m].rows(m, split).ids for m in ("fou", "zer"))
        assert np.array_equal(a, b)
    dm = MultiModalDataModule(prepared, batch_size=64, seed=0)
    batch = first_batch(dm)
    ids = {m: prepared[m].rows(m, "train").ids[batch[m]["index"].numpy()] for m in batch}
    assert set(batch) == {"fou", "zer"} and batch["fou"]["fou"].shape == (64, 76)
    assert not np.array_equal(ids["fou"], ids["zer"])  # unpaired: not the same digits


def test_cross_modality_leak_is_refused(data_root):
    other = replace(MFEAT, test_fraction=0.3)  # another split of the same 2,000 digits
    with pytest.raises(CmkdError, match="same ids"):
        prepare_modalities([ModalitySpec("fou", MFEAT), ModalitySpec("zer", other)], seed=0)
    with pytest.raises(CmkdError, match="at least 2"):
        prepare_modalities([ModalitySpec("fou", MFEAT)], seed=0)


def test_fused_view(data_root):
    prepared = prepare_modalities([ModalitySpec("fou", MFEAT), ModalitySpec("zer", MFEAT)], 0)
    fused = with_fused(prepared["fou"], ["fou", "zer"])
    rows = fused.rows("fused", "test")
    assert rows.x.shape[1] == 76 + 47
    assert np.array_equal(rows.ids, prepared["fou"].rows("fou", "test").ids)
    assert np.array_equal(rows.x[:, 76:], prepared["zer"].rows("zer", "test").x)


# --- export -----------------------------------------------------------------------------------


def test_exported_student_reproduces_the_joint_model_exactly(tmp_path):
    module = _module()
    opt = torch.optim.Adam(module.parameters(), 1e-2)
    for _ in range(3):  # move weights and BatchNorm statistics away from their initial values
        opt.zero_grad()
        sum(module.training_losses(_batch(module, (6, 5))).values()).backward()
        opt.step()
    module.eval()
    x = torch.randn(7, 6)
    export_student(module.students["v1"], tmp_path / "v1", "v1", K10[:3])
    student, meta = load_student(tmp_path / "v1.safetensors")
    assert torch.equal(student(x).logits, module.students["v1"](x).logits)
    full = module.students["v1"]
    assert torch.equal(
        student(x).logits, full.classifier(torch.cat(full.parts(x)[:2], dim=1))
    )  # Cl_m(concat(z_inv, z_inf))
    assert meta["modality"] == "v1" and meta["classes"] == K10[:3]
    names = set(student.state_dict())
    assert not any(n.startswith(("aux", "mod_", "discriminator")) for n in names)
    assert meta["parameters"] == sum(p.numel() for p in student.parameters())
    with pytest.raises(CmkdError, match="does not exist"):
        load_student(tmp_path / "missing.json")


def test_student_width_projection():
    """A backbone whose width is not 2 x latent gets a projection, and parts() halves it."""
    s = DisComStudent({"backbone": "mlp", "in_chans": 3, "options": {"hidden": [10]}}, 4, 6)
    inv, inf, irr = s.eval().parts(torch.randn(2, 3))
    assert inv.shape == inf.shape == irr.shape == (2, 6)


# --- end to end -------------------------------------------------------------------------------


def test_end_to_end_mfeat(data_root, quiet_run):
    """Two real mfeat views, 8 epochs: every modality learns, selection is per modality on
    validation, and the exported best student reproduces the reported test score."""
    specs = [ModalitySpec("fou", MFEAT, MLP), ModalitySpec("zer", MFEAT, MLP)]
    cfg = DisComConfig(batch_size=128)
    result = train_discomkd(specs, cfg, OptimConfig(lr=3e-3, epochs=8), quiet_run, seed=0)
    prepared = prepare_modalities(specs, 0)
    with open(f"{result['run_dir']}/csv/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/fou/f1_weighted")]
    for name, r in result["modalities"].items():
        assert r["best"]["test"]["acc"] > 0.5  # chance is 0.1
        val = [float(row[f"val/{name}/f1_weighted"]) for row in rows]
        assert r["best"]["epoch"] == int(np.argmax(val))  # first best-on-validation epoch
        assert r["parameters"] > r["single_backbone_parameters"]  # two encoders
        student, meta = load_student(r["export"])
        test = ModalityDataset(prepared[name].rows(name, "test"), name)
        assert evaluate_student(student, test, 10) == r["best"]["test"]
        assert meta["best_epoch"] == r["best"]["epoch"]
    saved = json.loads(Path(result["run_dir"], "results.json").read_text())
    assert saved == result


def test_end_to_end_digits_of_different_sizes(data_root, quiet_run):
    """Spoken and written digits: different sources and set sizes, epoch length 'smallest'."""
    audio = DataConfig(
        source="fsdd", split="official", val_fraction=0.1, test_fraction=0.1, train_per_class=5
    )
    image = DataConfig(source="mnist", train_per_class=12, val_fraction=0.05, test_fraction=0.05)
    cnn = ModelConfig(backbone="small_cnn", options={"widths": [8, 16]})
    specs = [ModalitySpec("audio", audio, cnn), ModalitySpec("image", image, cnn)]
    cfg = DisComConfig(batch_size=32, epoch_length="smallest", augment=False)
    result = train_discomkd(specs, cfg, OptimConfig(lr=3e-3, epochs=3), quiet_run, seed=1)
    assert result["steps_per_epoch"] == 2  # 50 audio clips: ceil(50 / 32)
    assert result["modalities"]["image"]["train_size"] == 120
    for r in result["modalities"].values():
        assert 0.0 <= r["best"]["test"]["acc"] <= 1.0
        assert r["best"]["epoch"] in range(3)


# --- CLI --------------------------------------------------------------------------------------

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "discomkd").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_configs_parse(config, capsys):
    from cmkd.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["discomkd", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    assert "authors_soft_targets: false" in capsys.readouterr().out


def test_cli_trains_and_exports(data_root, tmp_path, capsys):
    from cmkd.cli import main

    out = tmp_path / "runs"
    args = ["discomkd", "--config", str(CONFIGS[0].parent / "mfeat2.yaml"), "--optim.epochs", "1"]
    args += ["--run.output_dir", str(out), "--run.progress_bar", "false"]
    args += ["--run.accelerator", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fou" in printed and "zer" in printed and "single backbone" in printed
    for m in ("fou", "zer"):
        assert (out / "discomkd-mfeat2" / "seed0" / "students" / f"{m}.safetensors").is_file()
