"""The actor hook's cross-rank step in a real 2-process gloo group: ``global_inputs``'s all-gather (τ_ρ of
``forking``) and all-reduce (``unit_mean``'s Σw and count), on different data per rank.

The expectation is independent of the reduction: the 1-rank computation over the concatenated batch (no
process group), and the loss and gradient of the whole batch in one process. Each case also checks that the
ranks' local values differ from the global ones, so a missing reduction cannot pass.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tensordict import TensorDict
from test_loss import actor_config, make_batch
from test_loss_schemes import make_entropy, run

from reweight.loss import ReweightPolicyLossConfig, local_weight_sum, settings
from reweight.loss_inputs import LossInputs

WORLD = 2
LENGTH = 9
# Different batch sizes per rank, and rank 1's data shifted (higher entropy, lower p): every rank's local τ_ρ
# and mean weight differ from the global ones.
ROWS = (6, 4)
CASES = {
    "low_prob_unit": dict(scheme="low_prob", alpha=0.5, unit_mean=True),
    "forking": dict(scheme="forking", alpha=0.2),
    "forking_unit": dict(scheme="forking", alpha=0.3, unit_mean=True),
}


def rank_batch(rank: int):
    """(old, cur, adv, mask, entropy) of one rank, float64 ``(ROWS[rank], LENGTH)``."""
    old, cur, adv, mask = make_batch(batch=ROWS[rank], length=LENGTH, dtype=torch.float64, seed=70 + rank)
    ent = make_entropy(old.shape, seed=80 + rank) + 1.5 * rank
    if rank == 1:
        old, cur = old - 1.0, cur - 1.0
    return old, cur, adv, mask, ent


def no_padding(old, adv, mask, ent) -> TensorDict:
    """A rank's mini-batch as verl's update gets it (jagged nested tensors, see test_actor_hook.minibatch)."""
    lens = mask.sum(1).tolist()

    def nested(x):
        return torch.nested.nested_tensor([x[i, :n] for i, n in enumerate(lens)], layout=torch.jagged)

    fields = {"old_log_probs": old, "advantages": adv, "entropy": ent, "response_mask": mask.long()}
    return TensorDict({k: nested(v) for k, v in fields.items()}, batch_size=[mask.shape[0]])


def _rank_main(rank: int, init: str, out: str, case: str) -> None:
    import torch.distributed as dist

    import reweight.plugin  # noqa: F401  (the CPU platform: verl's get_device_id() is its device)
    from reweight.actor_hook import global_inputs

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        old, cur, adv, mask, ent = rank_batch(rank)
        policy_loss = ReweightPolicyLossConfig(**CASES[case])
        s = settings(actor_config(policy_loss))
        data = no_padding(old, adv, mask, ent)
        tau, scale, rank_mean = global_inputs(data, s, group=dist.group.WORLD)
        local_tau, local_scale, _ = global_inputs(data, s, group=None)
        # verl's engine: the global token count by all-reduce, each rank's loss × dp_size / N_global
        n = torch.tensor([int(mask.sum())], dtype=torch.int64)
        dist.all_reduce(n)
        loss, grad, _ = run(policy_loss, old, cur, adv, mask, LossInputs(ent, tau, scale),
                            dp_size=WORLD, batch_num_tokens=int(n), global_batch_size=sum(ROWS))  # fmt: skip
        torch.save(dict(tau=tau, scale=scale, rank_mean=rank_mean, local_tau=local_tau, local_scale=local_scale, loss=loss, grad=grad),
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(case: str, tmp_path: Path, monkeypatch) -> list[dict]:
    """Run :func:`_rank_main` on 2 spawned processes (they inherit the CPU platform); their results, by rank."""
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(f"tcp://127.0.0.1:{_free_port()}", str(tmp_path), case), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def whole_batch():
    parts = [rank_batch(r) for r in range(WORLD)]
    return [torch.cat([p[i] for p in parts]) for i in range(5)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_global_inputs_over_two_gloo_ranks_equal_the_one_rank_computation_over_the_concatenated_batch(case, tmp_path, monkeypatch):
    from reweight.actor_hook import global_inputs

    ranks = two_ranks(case, tmp_path, monkeypatch)
    old, cur, adv, mask, ent = whole_batch()
    policy_loss = ReweightPolicyLossConfig(**CASES[case])
    s = settings(actor_config(policy_loss))
    tau, scale, _ = global_inputs(no_padding(old, adv, mask, ent), s, group=None)
    for r in ranks:
        if s.scheme == "forking":
            assert r["tau"] == tau  # the same k-th largest value of the same set of floats
        else:
            assert r["tau"] is None
        assert r["scale"] == pytest.approx(scale, rel=1e-12)
    # the data make the reduction matter: no rank's local values are the global ones
    if s.scheme == "forking":
        assert all(r["local_tau"] != tau for r in ranks)
    if s.unit_mean:
        assert scale != 1.0 and all(r["local_scale"] != pytest.approx(scale, rel=1e-3) for r in ranks)
        # each rank's mean scaled weight, against the whole batch's weights split by rank
        for rank, r in enumerate(ranks):
            rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
            w_sum, count = local_weight_sum(old[rows], adv[rows], mask[rows], s, ent[rows], tau).tolist()
            assert r["rank_mean"] == pytest.approx(w_sum * scale / count, rel=1e-12)
        assert min(r["rank_mean"] for r in ranks) < 1 < max(r["rank_mean"] for r in ranks)
    else:
        assert all(r["rank_mean"] is None for r in ranks)
    # the ranks' losses and gradients add up to the 1-rank loss and gradient (verl: gradients averaged over
    # ranks, which the × dp_size in each rank's loss undoes)
    whole_loss, whole_grad, _ = run(policy_loss, old, cur, adv, mask, LossInputs(ent, tau, scale),
                                    batch_num_tokens=int(mask.sum()), global_batch_size=mask.shape[0])  # fmt: skip
    assert sum(r["loss"] for r in ranks) / WORLD == pytest.approx(whole_loss.item(), rel=1e-12)
    grad = torch.cat([r["grad"] for r in ranks]) / WORLD
    assert torch.allclose(grad, whole_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_two_rank_unit_mean_run_has_global_mean_one_while_each_rank_mean_is_not(e2e_assets, tmp_path):
    """One verl step on 2 FSDP2 ranks with low_prob + unit_mean: the global mean of the applied weights is 1,
    and the ranks' own means straddle 1 (a scale taken per rank would make each of them exactly 1)."""
    from test_e2e_cpu import _run, _train_steps

    from reweight.actor_hook import RANK_MEAN_METRICS

    steps = _train_steps(_run(
        e2e_assets, tmp_path, "trainer.total_training_steps=1", "trainer.n_gpus_per_node=2",
        "trainer.save_freq=-1", f"trainer.default_local_dir={tmp_path / 'ckpt'}", "reweight.monitor.freq=0",
        "actor_rollout_ref.actor.policy_loss.scheme=low_prob", "actor_rollout_ref.actor.policy_loss.alpha=0.5",
        "actor_rollout_ref.actor.policy_loss.unit_mean=true",
    ))  # fmt: skip
    m = steps[1]
    assert m["actor/reweight/weight_mean_global"] == pytest.approx(1.0, abs=1e-6)
    low, high = (m[k] for k in RANK_MEAN_METRICS)
    assert low < 1 - 1e-4 and high > 1 + 1e-4, (low, high)
    assert m["actor/reweight/weight_max"] > m["actor/reweight/weight_min"]  # the weights themselves vary
