"""What a study is: arms × seeds of real training runs on one base config, and how they are measured.

An **arm** is a name and a list of Hydra overrides on top of the base config (``embedded`` by default);
every arm is trained once per **seed** (the top-level ``seed=N`` key of our configs) and compared with
the arm named ``dapo``. Everything that determines the study's numbers is in :class:`StudySpec`; its
:meth:`~StudySpec.fingerprint` is stored in ``OUT/study.json`` so that a rerun with other settings is
refused instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from reweight.configs import POLICY_LOSS_KEY

BASELINE_ARM = "dapo"
# The override that pairs runs' rollouts with common random numbers (StudySpec.paired_sampling); the report
# detects paired sampling by it.
PAIRED_SAMPLING = "++actor_rollout_ref.rollout.engine_kwargs.hf.seed_by_prompt=true"
# Paired sampling also makes DAPO's refills timing-free (reweight.paired_refills, reweight/paired.py), so that
# runs at one seed draw the same prompts: the overrides paired sampling adds, in order.
PAIRED_SAMPLING_OVERRIDES = (PAIRED_SAMPLING, "++reweight.paired_refills=true")


# Every study run without verl's own validation: the study evaluates every final model and the base on the test
# split itself, and verl's validations cost ~5 s each per run.
VALIDATION_OFF = ("trainer.val_before_train=false", "trainer.test_freq=0")
# On the embedded config a study trains ``--jobs 2`` runs at once on 2 cores, so each run is sized to one core:
# one training rank (with two, FSDP's collectives run over gloo on a shared core), one agent-loop worker and no
# dataloader worker processes. Measured on 2 cores (docs/study.md): two such 10-step runs at once take 116 s,
# against 142 s with the embedded setup's two ranks, two agent-loop workers and eight dataloader workers.
EMBEDDED_RUN_LAYOUT = (
    "trainer.n_gpus_per_node=1",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "data.dataloader_num_workers=0",
)


def _arm(scheme: str, alpha: float | None = None, **extra: str) -> list[str]:
    out = [f"{POLICY_LOSS_KEY}.scheme={scheme}"]
    if alpha is not None:
        out.append(f"{POLICY_LOSS_KEY}.alpha={alpha}")
    out += [f"{POLICY_LOSS_KEY}.{k}={v}" for k, v in extra.items()]
    return out


# Arm presets (``--arms NAME``). ``default``: the question the study exists for (DAPO, the paper's weight at
# α = 0.2, the opposite weighting of Yang et al., and ``low_prob_unit``: the paper's weight rescaled to mean 1,
# the control for "it only takes a larger step"), four arms so that an hour on 2 cores buys 9 seeds each;
# ``paper``: the default plus the paper's other α (0.1); ``literature``: the family of token weights and the
# entropy-based rivals (docs/weights.md says where each comes from).
ARM_PRESETS: dict[str, dict[str, list[str]]] = {
    "default": {
        "dapo": _arm("none"),
        "low_prob_0.2": _arm("low_prob", 0.2),
        "dominate_0.2": _arm("dominate", 0.2),
        "low_prob_unit": _arm("low_prob", 0.2, unit_mean="true"),
    },
    "paper": {
        "dapo": _arm("none"),
        "low_prob_0.1": _arm("low_prob", 0.1),
        "low_prob_0.2": _arm("low_prob", 0.2),
        "dominate_0.2": _arm("dominate", 0.2),
        "low_prob_unit": _arm("low_prob", 0.2, unit_mean="true"),
    },
    "smoke": {"dapo": _arm("none"), "low_prob": _arm("low_prob", 0.2)},
    "literature": {
        "dapo": _arm("none"),
        "low_prob": _arm("low_prob", 0.2),
        "dominate": _arm("dominate", 0.2),
        "middle": _arm("middle", 0.2),
        "normalize": _arm("normalize", 0.2),
        "low_prob_positive": _arm("low_prob", 0.2, apply_to="positive"),
        "low_prob_negative": _arm("low_prob", 0.2, apply_to="negative"),
        "low_prob_unit": _arm("low_prob", 0.2, unit_mean="true"),
        "forking_0.2": _arm("forking", 0.2),  # ρ = 20%, arXiv 2506.01939
        "entropy_bonus": _arm("entropy_bonus", 0.4, kappa=2),  # α = 0.4, κ = 2, arXiv 2506.14758
    },
}

# τ grids of the selective-replacement sweep (Fig. 1c) per criterion, and the γ grid of Fig. 4.
DEFAULT_GRIDS: dict[str, list[float]] = {
    "logp_diff": [-2.0, -1.0, -0.5, -0.3, -0.1, 0.0],
    "entropy": [2.0, 1.0, 0.5, 0.3, 0.1],
    "kl": [1.0, 0.5, 0.2, 0.1, 0.05],
    "random": [0.05, 0.1, 0.2, 0.5],
}
DEFAULT_GAMMAS = [0.05, 0.1, 0.2, 0.5]
SMOKE_GRIDS: dict[str, list[float]] = {"logp_diff": [-0.5, 0.0], "entropy": [1.0], "kl": [0.1], "random": [0.2]}

_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyInputError(ValueError):
    """A study setting that cannot work; raised before any run starts."""


@dataclass
class StudySpec:
    """Every setting that determines a study's results.

    Attributes:
        config_name: base training config (``embedded``: the local tiny model and synthetic task).
        overrides: Hydra overrides applied to every run, before the arm's own. Default: no validation inside
            training (:data:`VALIDATION_OFF`): the study evaluates every final model and the base on the test
            split itself.
        one_core_runs: on the embedded config, size every run to one core (:data:`EMBEDDED_RUN_LAYOUT`: one
            training rank, one agent-loop worker, no dataloader workers; applied before ``overrides``, see
            :meth:`run_overrides`). Default true; other configs keep their own layout whatever it says.
        arms: arm name → Hydra overrides; must contain ``dapo`` (the baseline of every comparison).
        seeds: values of the top-level ``seed`` key; every arm is trained once per seed. Default 1..9: what fits
            the default study (4 arms, 10 steps, one core per run) into an hour on 2 CPU cores; docs/study.md gives the
            resolution it reached.
        paired_sampling: on the ``hf`` rollout, sample every run with common random numbers
            (``rollout.engine_kwargs.hf.seed_by_prompt``): runs with the same seed draw the same random
            numbers for the same prompt at the same step, whatever their loss. Other rollouts ignore it.
        train_steps: ``trainer.total_training_steps`` of every run (None: the config's). Default 10: on the
            embedded chain task DAPO gains most of its first 20 steps' improvement in the first 10.
        test_data: evaluation problems (verl parquet); None: the embedded task's test split.
        test_limit: use only the first N test problems everywhere (None: all).
        n: samples per test problem (avg@n, pass@k for k = 1..n). Default 16 (256 test problems: 4096 samples
            per model; evaluation noise is small next to the seed-to-seed spread of training).
        temperature / top_p / max_new_tokens: evaluation sampling (None: the config's max response length).
        scorer: how a response is judged (``dapo``: exactly the training reward; see reweight-eval).
        bootstrap: resamples of the bootstrap intervals (problems and seeds resampled).
        analysis_prompts: test prompts of the direction analysis, in all, split over the seeds: every arm's model
            of every seed is analysed on ``max(1, analysis_prompts // len(seeds))`` prompts of its own (seed i of
            ``seeds`` starts at test problem i × that count, wrapping). Default 64, the budget the analysis had
            when it ran on one seed only, so it costs about the same while its mean and interval span the seeds.
        analysis_samples: samples per prompt and model (base, RL) of the direction analysis. Default 2.
        decode_prompts: test prompts of each decoding sweep, in all, split over the seeds like ``analysis_prompts``.
            Default 32 (the one-seed budget): with 10 seeds, 3 prompts per seed; the recovery curve and the γ grid
            are means over seeds whose intervals resample seeds and prompts (docs/study.md).
        decode_n: samples per prompt of the replacement / extrapolation sweeps. Default 4.
        grids: τ grid per replacement criterion (Fig. 1c); extrapolate_tau / gammas: the Fig. 4 grid.
        decode_top_p: top-p of the decoding sweeps (the paper's 0.7).
        support_k: sampling budget of the empirical support (None: n).
    """

    config_name: str = "embedded"
    overrides: list[str] = field(default_factory=lambda: list(VALIDATION_OFF))
    one_core_runs: bool = True
    arms: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in ARM_PRESETS["default"].items()})
    seeds: list[int] = field(default_factory=lambda: list(range(1, 10)))
    paired_sampling: bool = True
    train_steps: int | None = 10
    test_data: str | None = None
    test_limit: int | None = None
    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    scorer: str = "dapo"
    bootstrap: int = 2000
    analysis_prompts: int = 64
    analysis_samples: int = 2
    decode_prompts: int = 32
    decode_n: int = 4
    grids: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRIDS.items()})
    extrapolate_tau: float = -0.3
    gammas: list[float] = field(default_factory=lambda: list(DEFAULT_GAMMAS))
    decode_top_p: float = 0.7
    support_k: int | None = None

    @classmethod
    def smoke(cls, **changes: Any) -> "StudySpec":
        """1 seed, arms ``dapo`` and ``low_prob``, 2 training steps, a handful of samples: every section, fast."""
        base = dict(
            overrides=["trainer.test_freq=1", "trainer.val_before_train=true"],
            # the embedded setup's two ranks: the smoke study checks every section on verl's data-parallel path
            # (and the e2e tests resume its two-rank checkpoints)
            one_core_runs=False,
            arms={k: list(v) for k, v in ARM_PRESETS["smoke"].items()},
            seeds=[1], train_steps=2, test_limit=16, n=4, bootstrap=200, analysis_prompts=8, analysis_samples=1,
            decode_prompts=8, decode_n=2, grids={k: list(v) for k, v in SMOKE_GRIDS.items()}, gammas=[0.1],
        )
        base.update(changes)
        return cls(**base)

    def check(self) -> None:
        """Settings that are wrong whatever the config; raises :class:`StudyInputError` naming the setting."""
        if BASELINE_ARM not in self.arms:
            raise StudyInputError(f"arms={sorted(self.arms)}: an arm named {BASELINE_ARM!r} (the baseline) is required")
        for name, overrides in self.arms.items():
            if not _ARM_NAME.match(name):
                raise StudyInputError(f"arm name {name!r}: use letters, digits, '_', '.', '-' (it names directories)")
            if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise StudyInputError(f"arm {name!r}: overrides must be a list of KEY=VALUE strings, got {overrides!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise StudyInputError(f"seeds={self.seeds}: give one or more distinct seeds")
        if self.test_limit is not None and self.test_limit < 1:
            raise StudyInputError(f"test_limit={self.test_limit} must be >= 1")
        for key in ("n", "bootstrap", "analysis_prompts", "analysis_samples", "decode_prompts", "decode_n"):
            if int(getattr(self, key)) < 1:
                raise StudyInputError(f"{key}={getattr(self, key)} must be >= 1")
        if self.train_steps is not None and self.train_steps < 1:
            raise StudyInputError(f"train_steps={self.train_steps} must be >= 1")
        if self.support_k is not None and not 1 <= self.support_k <= self.n:
            raise StudyInputError(f"support_k={self.support_k} must be in [1, n={self.n}]")
        from reweight.evaluation.scoring import check_scorer

        check_scorer(self.scorer)

    def run_overrides(self) -> list[str]:
        """The overrides every run gets before its arm's: :data:`EMBEDDED_RUN_LAYOUT` (``one_core_runs`` on the
        embedded config), then ``overrides``."""
        layout = list(EMBEDDED_RUN_LAYOUT) if self.one_core_runs and self.config_name == "embedded" else []
        return [*layout, *self.overrides]

    def fingerprint(self) -> dict[str, Any]:
        """The settings as JSON-able data (stored in ``study.json``)."""
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
