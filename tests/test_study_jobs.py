"""``reweight-study --jobs N``: training runs at once, every other step after them, failures stop new starts."""

from __future__ import annotations

import threading

import pytest

from reweight.study.pipeline import Step, Study
from reweight.study.spec import StudyInputError, StudySpec


WAIT_S = 60  # how long an action waits for the others it expects to run beside it (a bug, not a slow machine)


class Recorder:
    """Step actions that note when they start and end, and how many ran at once.

    Nothing depends on timing: a training action waits (on a condition, not a sleep) until ``jobs`` trainings run
    at once or every training has started, so a study that runs fewer at once keeps the peak below ``jobs``
    (the wait times out and the test fails), and one that runs more shows a higher peak.
    """

    def __init__(self, jobs: int = 1, trainings: int = 0):
        self.cond = threading.Condition()
        self.jobs, self.trainings = jobs, trainings
        self.running = self.started = self.peak = 0
        self.order: list[str] = []

    def action(self, key: str, fail: bool = False, before_end=None):
        def run():
            with self.cond:
                self.running += 1
                self.started += key.startswith("train")
                self.peak = max(self.peak, self.running)
                self.order.append(f"start {key}")
                self.cond.notify_all()
                if key.startswith("train"):
                    self.cond.wait_for(lambda: self.running >= self.jobs or self.started == self.trainings, WAIT_S)
            if before_end is not None:
                before_end()
            with self.cond:
                self.running -= 1
                self.order.append(f"end {key}")
            if fail:
                raise RuntimeError(f"{key} failed")
            return {"key": key}

        return run


def _study(tmp_path, jobs: int, monkeypatch) -> Study:
    import reweight.study.report as report

    monkeypatch.setattr(report, "write_report", lambda study: {"report.md": study.out / "report.md"})
    study = Study(StudySpec.smoke(), tmp_path / "study", jobs=jobs, log=lambda *_: None)
    return study


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_at_most_jobs_trainings_run_at_once_and_the_rest_follows_them(tmp_path, monkeypatch, jobs):
    rec = Recorder(jobs, trainings=5)
    study = _study(tmp_path, jobs, monkeypatch)
    steps = [Step(f"train_{i}", "train", f"train {i}", rec.action(f"train_{i}")) for i in range(5)]
    steps += [Step(f"eval_{i}", "eval", f"eval {i}", rec.action(f"eval_{i}")) for i in range(2)]
    study.run(steps)
    assert rec.peak == jobs
    assert all((study.out / "steps" / f"{s.key}.json").exists() for s in steps)
    # no evaluation starts before every training run has ended, and evaluations run one at a time, in order
    last_train_end = max(i for i, e in enumerate(rec.order) if e.startswith("end train"))
    evals = [e for e in rec.order if "eval" in e]
    assert rec.order.index("start eval_0") > last_train_end
    assert evals == ["start eval_0", "end eval_0", "start eval_1", "end eval_1"]


def test_a_failed_training_stops_new_starts_and_is_raised_after_the_running_ones(tmp_path, monkeypatch):
    import concurrent.futures

    futures = []

    class Pool(concurrent.futures.ThreadPoolExecutor):  # the study's pool, noting the futures it hands out
        def submit(self, *args, **kwargs):
            futures.append(super().submit(*args, **kwargs))
            return futures[-1]

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Pool)

    def after_a_has_failed():  # b ends only once a's failure is on its future, so the study sees it first
        concurrent.futures.wait(futures[:1], timeout=WAIT_S)
        assert futures[0].done()

    rec = Recorder(jobs=2, trainings=3)
    study = _study(tmp_path, 2, monkeypatch)
    steps = [
        Step("train_a", "train", "a", rec.action("train_a", fail=True)),
        Step("train_b", "train", "b", rec.action("train_b", before_end=after_a_has_failed)),
        Step("train_c", "train", "c", rec.action("train_c")),
        Step("eval_a", "eval", "eval a", rec.action("eval_a")),
    ]
    with pytest.raises(RuntimeError, match="train_a failed"):
        study.run(steps)
    done = {p.stem for p in (study.out / "steps").glob("*.json")}
    assert done == {"train_b"}  # b was running when a failed: it finished and is recorded; c and the eval never started
    assert "start train_c" not in rec.order and "start eval_a" not in rec.order


def test_a_rerun_skips_finished_trainings(tmp_path, monkeypatch):
    rec = Recorder()
    study = _study(tmp_path, 2, monkeypatch)
    steps = [Step(f"train_{i}", "train", f"train {i}", rec.action(f"train_{i}")) for i in range(3)]
    (study.out / "steps").mkdir(parents=True)
    (study.out / "steps" / "train_1.json").write_text("{}")
    study.run(steps)
    assert sorted(e for e in rec.order if e.startswith("start")) == ["start train_0", "start train_2"]


@pytest.mark.parametrize("jobs, launch", [(0, "local"), (2, "slurm")])
def test_bad_jobs_are_refused(tmp_path, jobs, launch):
    with pytest.raises(StudyInputError, match="--jobs"):
        Study(StudySpec.smoke(), tmp_path, jobs=jobs, launch=launch)


def test_the_time_left_counts_trainings_jobs_at_a_time():
    steps = [Step(f"t{i}", "train", "", lambda: None) for i in range(4)] + [Step("e", "eval", "", lambda: None)]
    assert Study._eta(steps, {"train": [100.0], "eval": [10.0]}, jobs=2) == "3m30s"  # 4 x 100 / 2 + 10
    assert Study._eta(steps, {"train": [100.0]}, jobs=1) == "6m40s + eval (not yet timed)"
