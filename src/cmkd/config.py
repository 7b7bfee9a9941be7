"""Typed run configuration. The CLI and the YAML files in configs/ are generated from these
dataclasses (jsonargparse), so a typo in a config is an error, not a silently ignored key.

Configs are data: every free-form field is typed `dict[str, JsonValue]` (plain strings,
numbers, booleans, lists and mappings), never `Any`, so no value in a config can name a class
for the parser to import or instantiate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

# Plain data only. `Any` here would let jsonargparse instantiate a `class_path` given in a
# config file (running code on load); a union of plain types never does.
JsonValue = Union[str, int, float, bool, None, list, dict]  # noqa: UP007 (jsonargparse reads it)


@dataclass
class DataConfig:
    """Which data, and how it is split and batched."""

    source: str = "eurosat_paired"
    """Registered source: eurosat_paired, eurosat_ms, eurosat_rgb, fsdd, mnist, mfeat,
    ucmerced, folder, npz."""
    options: dict[str, JsonValue] = field(default_factory=dict)
    """Source options, e.g. {bands: [B04, B03, B02]} or {folders: {ms: path, rgb: path}}."""
    root: str | None = None
    """Data root; else $CMKD_DATA, else ../shared/data beside the checkout, else ~/.cache/cmkd."""
    val_fraction: float = 0.2
    """Share of each class held out for validation (model selection). With a carried or
    official split that gives no validation rows: share of the non-test rows."""
    test_fraction: float = 0.2
    """Share of each class held out for the test score (stratified split only)."""
    split: Literal["auto", "stratified", "official"] = "auto"
    """stratified: per-class random split by val_fraction and test_fraction, fixed by the seed.
    official: the split the data comes with: an npz that carries its own (arrays
    x_<modality>_test + y_test, optionally _val, or a `split` array of train/val/test), or a
    source's published test split (FSDD: takes 0-4). auto: official for an npz that carries
    a split, stratified otherwise."""
    train_per_class: int | None = None
    """Keep only this many training samples per class (a label-scarce student); val and test
    are unchanged."""
    batch_size: int = 64
    augment: bool = False
    """Random flips and 90-degree rotations of the trained model's images (never the teacher's)."""
    standardize: bool = True
    """Standardise every input channel with training-split statistics (stored in the
    checkpoint). false: the network takes the inputs as they are (for data already
    normalised your own way); it still carries an identity standardisation, so checkpoints
    keep one shape."""


@dataclass
class ModelConfig:
    """The trained network."""

    backbone: str = "small_cnn"
    """small_cnn, mlp, linear (one Linear layer on vectors), resnet18, resnet34, mobilenetv2_100,
    shufflenet_v2_x0_5, or any timm name."""
    pretrained: bool = False
    embedding_dim: int | None = None
    """Optional linear projection of the pooled features to this width."""
    options: dict[str, JsonValue] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The optimiser and its schedule."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 30
    scheduler: Literal["none", "cosine"] = "none"
    momentum: float = 0.9
    """SGD only: momentum factor (0 for plain SGD)."""
    nesterov: bool = False
    """SGD only: Nesterov momentum (needs momentum > 0)."""


@dataclass
class RunConfig:
    """Where results go and how the Lightning Trainer runs."""

    output_dir: str = "runs"
    name: str | None = None
    """Run folder name under output_dir (default: derived from the command and modality); a
    relative path that stays inside output_dir."""
    accelerator: str = "auto"
    devices: int | str = 1
    """Devices per node: 4, "auto", or a list like "0,1"; several run one process each."""
    strategy: str = "auto"
    """Lightning strategy: auto (DDP when devices > 1), ddp, ddp_spawn,
    ddp_find_unused_parameters_true, ..."""
    num_nodes: int = 1
    """Machines taking part in DDP (launched by torchrun or SLURM, one per node)."""
    precision: str = "auto"
    """A Lightning precision (32-true, bf16-mixed, 16-mixed, ...) or auto (the default):
    bf16-mixed where the device computes bfloat16 natively (CUDA capability >= 8.0; a CPU with
    AVX512-BF16 or AMX) and the network trains a convolution or has at least 1M trainable
    parameters (`cmkd.precision.gains_from_bf16`), else 32-true.
    bf16 costs no accuracy on the SemBridge grid's scenarios (benchmarks/precision.md);
    results.json records the precision used."""
    channels_last: bool | Literal["auto"] = "auto"
    """Channels-last memory layout; auto (the default): for every network with convolution
    weights, where it selects faster kernels (benchmarks/performance.md). results.json records
    whether it was used."""
    matmul_weight_grad: bool | Literal["auto"] = "auto"
    """Compute a convolution's weight gradient as one matrix product where its output map is
    small and its channels many (resnet18/34's last stages; cmkd.models.matmul_weight_grad),
    where oneDNN's own kernel is slow; auto (the default): on a CPU. The same gradient to the
    last bits, x1.5 per resnet18 bf16 step on an AMX CPU (benchmarks/performance.md).
    results.json records whether it was on (a network with convolutions, on a CPU)."""
    fused_optimizer: bool | Literal["auto"] = "auto"
    """torch's fused optimiser kernel (Adam, AdamW, SGD): one pass over all parameters per step
    instead of a loop of elementwise operations per tensor; the same update to the last bits.
    auto (the default): where every trained parameter is a floating-point tensor on a CPU or
    CUDA device. On a 2-core CPU resnet18's Adam step ran x1.7-2.1 faster with channels-last
    weights, x3.4-3.8 in the standard layout (benchmarks/performance.md, optimizer section).
    results.json records whether it was used."""
    standardize_once: bool | Literal["auto"] = "auto"
    """Standardise the training split once per fit, in the network's layout, and serve batches
    from that copy instead of standardising every batch (cmkd.served): the same values bit for
    bit, held beside the raw split. auto (the default): on a CPU, where that float32 copy
    takes at most 1 GiB; true: wherever the data allows it. results.json records whether it
    was used (run.inputs_standardized_once)."""
    threads: int | Literal["auto"] | None = None
    """CPU threads for training: None leaves torch's setting (every core; the `cmkd` command
    makes idle OpenMP threads wait passively, so extra threads on a busy machine cost little),
    N, or auto (the cores not busy at start, from the load average, at least 1: faster on a
    busy machine, but then the thread count, and the last bits of results, depend on it)."""
    val_every: int | None = None
    """Validate every N epochs (and always after the last); default ceil(epochs / 50), so a
    long run of tiny epochs is not dominated by validation. Only validated epochs can be
    chosen as best."""
    checkpoint_every: int | None = None
    """Write last.ckpt (the resume point) every N epochs and after the last; default: at every
    validation. A resume restarts from the last one written."""
    track_test: bool = False
    """Also score the test split after every validation and record it in results.json
    (test_by_epoch, best_on_test): only to compare with published numbers whose epoch was
    picked on the test split. cmkd never selects anything on it."""
    epoch_blocks: bool = True
    """Where the module allows it (supervised training on one device) and a data epoch is at
    most 16 steps, let one Lightning epoch cover the data epochs between two validations: the
    same updates, without Lightning's per-epoch and per-step cost (1 ms and more; a
    full-batch step of a small model is less). Callbacks then see one training batch per
    block; false gives them every step."""
    durable_checkpoints: bool = False
    """fsync every checkpoint. Not needed against a killed process (checkpoints are written to
    a temp file and renamed, so a kill never leaves half a file); only against power loss."""
    async_checkpoints: bool = False
    """Write checkpoints on a background thread (the weights are copied on the training
    thread first)."""
    progress_bar: bool = True
    resume: bool = False
    """Continue an interrupted run from its last.ckpt."""
    overwrite: bool = False
    """Replace a finished or interrupted run of the same name instead of refusing."""


@dataclass
class TermConfig:
    """One distillation term of the loss: weight * term(student, teacher)."""

    name: str = "kd"
    weight: float = 1.0
    params: dict[str, JsonValue] = field(default_factory=dict)


def _default_terms() -> list[TermConfig]:
    return [TermConfig("kd", 0.5, {"temperature": 4.0})]


@dataclass
class PairingConfig:
    """How each student training sample finds the teacher sample that teaches it."""

    strategy: str = "paired"
    """A registered strategy (`cmkd pairings` lists them): paired (the same sample, by id);
    class_random (a random same-class teacher sample, re-drawn every epoch); matched (a pair list
    from `cmkd match`, see `pairs`); unpaired (the DisCoM-KD way: each set shuffled on its own
    every epoch and the two zipped, labels unused); or one registered with
    `cmkd.register_pairing`."""
    pairs: str | None = None
    """Pair list JSON for strategy 'matched'."""
    dynamic: bool = False
    """DynM: re-pair each student sample with the same-class teacher sample whose softened
    logits its current logits follow best (min KL), at the epochs of the schedule."""
    schedule: list[int] | None = None
    """Explicit re-match epochs; else the curriculum e0 + sum_i (de + emu (i - 1))."""
    e0: int = 30
    de: int = 30
    emu: int = 5
    temperature: float = 3.0
    """Softening temperature of the DynM KL."""
    options: dict[str, JsonValue] = field(default_factory=dict)
    """Settings of a user-registered strategy (the built-ins take none)."""


@dataclass
class MatchConfig:
    """An offline matcher run (`cmkd match`): how the pair list is made."""

    method: str = "ssm"
    """A registered matcher (`cmkd matchers` lists them): ssm (SemBridge's self-supervised
    matcher), teacher_embedding (cosine in the frozen teacher's space), class_random (when no
    pseudo-view exists), or one registered with `cmkd.register_matcher`."""
    pseudo_view: str | None = None
    """For ssm: teacher-to-student view (e.g. eurosat_ms_to_rgb); for teacher_embedding:
    student-to-teacher."""
    backbone: str = "resnet34"
    """The SSM matcher's two encoders."""
    epochs: int = 100
    batch_size: int = 64
    options: dict[str, JsonValue] = field(default_factory=dict)
    """Settings of a user-registered matcher."""


@dataclass
class QualityConfig:
    """Quality-based per-sample weights on the distillation terms (soft-constrained CMKD; see
    cmkd.methods.quality, a reconstruction). Weights have mean 1 in each batch."""

    source: Literal["none", "confidence", "norm", "dropout"] = "none"
    """confidence: the teacher's probability of the true class; norm: its embedding norm,
    batch-standardised and clipped; dropout: stability of its output under dropout (SER-FIQ)."""
    power: float = 1.0
    """confidence and dropout: q ** power before normalising (> 1 sharpens)."""
    norm_clip: float = 2.0
    norm_strength: float = 0.5
    """norm: w = 1 + strength * clip(z, -clip, clip) / clip, before normalising."""
    dropout_p: float = 0.5
    dropout_passes: int = 10
    terms: list[str] | None = None
    """Names of the weighted terms (each needs a per-sample form); None: every term."""


@dataclass
class CorruptionConfig:
    """Corrupt a seeded fraction of the teacher's training inputs at distillation time (the
    robustness scenario; cmkd.data.corruption). The teacher itself is trained on clean data."""

    kind: Literal["none", "noise", "blank", "clip"] = "none"
    fraction: float = 0.0
    severity: float | None = None
    """noise: std in units of the channel std (default 1); blank, clip: share of channels or
    rows blanked, of values clipped (default 0.5)."""
    seed: int = 0


@dataclass
class DistillConfig:
    teacher: str = ""
    """The teacher: a checkpoint from `cmkd train`, or its run folder (runs/NAME/seedK). Its
    training samples come from the data it was trained on (its source, split and seed), which
    may differ from the student's."""
    teacher_weights: Literal["best", "last"] = "best"
    """For a run folder: the best-on-validation weights or the last epoch's (with a tiny
    validation split, best-on-validation may be chance)."""
    pairing: PairingConfig = field(default_factory=PairingConfig)
    ce_weight: float = 0.5
    terms: list[TermConfig] = field(default_factory=_default_terms)
    cache_teacher: bool = True
    """Compute the frozen teacher's outputs once per run instead of every step."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    teacher_target: Literal["sample", "class_mean", "teacher_free"] = "sample"
    """sample: the paired teacher sample's outputs. Two controls that tell cross-modal
    knowledge from mere regularisation: class_mean, the teacher's mean outputs over its
    training samples of the student sample's class (class-level knowledge only); teacher_free,
    a hand-made soft label with no teacher information (Yuan et al. 2020)."""
    teacher_free_confidence: float = 0.9
    """Probability of the true class in the teacher-free soft label."""
    teacher_data: DataConfig | None = None
    """The bank of teacher-modality samples to pair with (its train split, same seed as the
    student's); default: the data the teacher was trained on. E.g. the true twins of the
    student's samples for an oracle row."""
    class_map: str | dict[str, str | None] | None = None
    """For a teacher trained on other classes (another dataset's taxonomy): teacher class ->
    student class, many to one, as a YAML file path or an inline mapping (null or absent: the
    teacher class is unused). Distillation then runs over the covered student classes only
    (those some teacher class reaches); samples of uncovered classes train on CE alone. See
    `cmkd.classmap` and the README's "Teacher and student with different classes"."""


@dataclass
class ModalitySpec:
    """One modality of a multi-modal run (DisCoM-KD): where its samples come from and its
    backbone."""

    name: str
    """The modality within its source (e.g. fou for mfeat, ms for eurosat_paired, audio for
    fsdd, image for mnist); it names the modality everywhere (batches, metrics, exports)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Source and split of this modality (batch_size is ignored: the run sets one for all)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone of this modality's two encoders (embedding_dim is ignored)."""


DISCOMKD_TERMS = ("cl", "aux", "mod", "adv", "orth")


@dataclass
class DisComConfig:
    """DisCoM-KD's own settings (the paper's defaults)."""

    latent_dim: int | None = None
    """Width of z_inv, z_inf and z_irr; default half the specific encoder's pooled width (the
    paper: ResNet-18, 512 -> 256). Modalities must agree: Cl_aux is shared."""
    batch_size: int = 128
    """Per modality and step."""
    epoch_length: Literal["largest", "smallest"] = "largest"
    """An epoch walks through the largest training set (smaller ones cycle, reshuffled) or the
    smallest (larger ones give a fresh random subset each epoch)."""
    grl_factor: float = 1.0
    """Gradient reversal factor in front of the discriminator."""
    grl_schedule: Literal["constant", "dann"] = "constant"
    """constant: grl_factor throughout; dann: grl_factor * (2 / (1 + exp(-10 p)) - 1), p the
    training progress in [0, 1] (Ganin & Lempitsky 2015)."""
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DISCOMKD_TERMS, 1.0))
    """Weight of each term: cl, aux, mod, adv, orth."""
    authors_soft_targets: bool = False
    """Reproduce the authors' bug: modality targets all-ones (first modality) / all-zeros
    (others) soft targets instead of integer labels."""
    select_on: Literal["f1_weighted", "acc"] = "f1_weighted"
    """Validation score that picks each modality's best epoch."""
    augment: bool = True
    """Random flips and 90-degree rotations of square image modalities (the paper's)."""
