"""The Hydra configs of ``reweight-train`` (shipped in the wheel as ``reweight.configs``).

Config keys that Python code names live here, next to the YAML that defines them, so that every layer
can import them without importing torch or verl (``reweight.study`` builds its arms from them).
"""

# The policy-loss section of the composed trainer config (configs/method/reweight.yaml fills it):
# ``_target_``, ``loss_mode`` and, for loss_mode ``reweight``, ``scheme``, ``alpha``, ``prob_source``, ``apply_to``.
POLICY_LOSS_KEY = "actor_rollout_ref.actor.policy_loss"

# The live direction monitor (reweight/monitor.py, docs/monitor.md): every N-th step Δlog p against the base
# model is logged under ``direction/``; 0 turns it off. Declared in configs/method/dapo.yaml.
MONITOR_FREQ_KEY = "reweight.monitor.freq"

# Paired refills (reweight/paired.py, docs/study.md): DAPO's dynamic sampling in complete waves, so that runs at one
# seed draw the same prompts and keep the same groups until their policies differ. Declared in configs/method/dapo.yaml.
PAIRED_REFILLS_KEY = "reweight.paired_refills"
