"""Multi-node launch for ``reweight-train``: Ray bring-up, job submission, SLURM, sweeps, W&B summaries.

Everything here is a library; ``reweight-launch`` (:mod:`reweight.launch.cli`) is a thin shell over it.

- :mod:`reweight.launch.cluster`: ``ray start`` command lines for head and worker nodes, the cluster's
  alive nodes and their resources (through the dashboard), the nodes x GPUs fit check, waiting for nodes.
- :mod:`reweight.launch.overrides`: Hydra override parsing (Hydra's own parser) and sweep expansion.
- :mod:`reweight.launch.wandb_env`: the W&B environment shipped to jobs and the credentials check.
- :mod:`reweight.launch.submit`: one ``reweight-train`` run as one Ray job (``JobSubmissionClient``).
- :mod:`reweight.launch.slurm`: the sbatch script (head + workers + the job) and its submission.
- :mod:`reweight.launch.sweep`: a Hydra multirun as one Ray (or SLURM) job per point, with a manifest.
- :mod:`reweight.launch.wandb_files`: a reader for W&B's offline ``run-*.wandb`` transaction logs.
- :mod:`reweight.launch.summary`: a sweep's runs read back (W&B API or offline files) into one table.
- :mod:`reweight.launch.probe`: run inside a job: is our loss registered in a Ray worker on every node?

Nothing here imports verl, torch or Ray at import time.
"""
