"""verl-reweight: direction-aware RLVR (arXiv 2603.22117) on verl's DAPO trainer.

Submodules (imported lazily; nothing here imports verl, torch or Hydra):

- ``reweight.weights``: the paper's token weight w = 1 + α(1 − p) and comparison schemes (pure).
- ``reweight.loss``: the ``reweight`` policy loss registered in verl, and its config class.
- ``reweight.plugin``: what verl's ``verl.plugins`` entry point loads in every process.
- ``reweight.analysis``, ``reweight.decoding``, ``reweight.evaluation``: Δlog p analysis,
  selective replacement / extrapolation, and evaluation.
"""

__version__ = "0.1.0"
