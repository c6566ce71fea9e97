"""``reweight-study``: the paper's comparison end to end — arms × seeds of verl training, then evaluation,
direction analysis, selective replacement, extrapolation and support, in one resumable report.

Layers: :mod:`~reweight.study.spec` (settings, presets), :mod:`~reweight.study.stats` (intervals),
:mod:`~reweight.study.pipeline` (steps), :mod:`~reweight.study.cluster` (Ray / SLURM runs),
:mod:`~reweight.study.report` (report.md / report.json / figures), :mod:`~reweight.study.cli`.
"""

from reweight.study.spec import ARM_PRESETS, StudyInputError, StudySpec

__all__ = ["ARM_PRESETS", "StudyInputError", "StudySpec"]
