"""A synthetic verifiable task: integer arithmetic with difficulty levels.

It stands in for DAPO-Math-17k where no hub is reachable (CI, laptops): problems are generated
locally from a seed, answers are integers, and the checker is exact. The answer format is the
same as the math data's (the last ``\\boxed{...}`` in the response), so the same reward and
evaluation code serves both.

Levels (``level`` in ``extra_info``):

    1: a + b                 a, b in [0, 9]
    2: a + b, a - b          a, b in [0, 99]
    3: a * b                 a in [2, 12], b in [2, 12]
    4: a * b + c             a, b in [2, 12], c in [0, 99]
    5: a ± b ± c ± d         a in [0, 9], b, c, d in [1, 9], every running value in [0, 9]
                             (a chain: the reference solution writes each intermediate step,
                             ``3+4=7. 7-2=5. 5+5=10. \\boxed{10}``)
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

DATA_SOURCE = "synthetic_arith"
LEVELS = (1, 2, 3, 4, 5)
CHAIN_LEVEL = 5
CHAIN_OPS = 3  # operations per chain question
CHAIN_MAX = 9  # every running value of a chain stays in [0, CHAIN_MAX]: one-digit steps
INSTRUCTION = "Put the final answer in \\boxed{}."


@dataclass(frozen=True)
class Problem:
    question: str  # e.g. "12+7"
    answer: int
    level: int

    @property
    def prompt(self) -> str:
        """The user message shown to the model."""
        return f"Compute {self.question}. {INSTRUCTION}"

    @property
    def solution(self) -> str:
        """A reference response (used for supervised warm-up)."""
        return worked_solution(self)


def apply_op(value: int, op: str, operand: int) -> int:
    """``value op operand`` for ``op`` in ``+`` / ``-``."""
    return value + operand if op == "+" else value - operand


def chain_steps(question: str) -> list[tuple[int, str, int]]:
    """The operations of a chain question, ``[(running value, op, operand), ...]``, left to right."""
    tokens = re.findall(r"\d+|[+-]", question)
    value, steps = int(tokens[0]), []
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        steps.append((value, op, int(operand)))
        value = apply_op(value, op, int(operand))
    return steps


def worked_solution(problem: "Problem", slip: "Callable[[], int] | None" = None) -> str:
    """The response text for ``problem``: the computation written out, then the boxed answer.

    ``slip`` (for supervised warm-up on imperfect solutions) is called once per written result and
    returns an error added to it (0: none); a chain continues from the slipped value, so an early
    slip makes every later step and the answer wrong, as a real arithmetic mistake would.
    """
    slip = slip or (lambda: 0)
    if problem.level != CHAIN_LEVEL:
        answer = problem.answer + slip()
        return f"{problem.question}={answer}. \\boxed{{{answer}}}"
    parts, value = [], None
    for start, op, operand in chain_steps(problem.question):
        start = start if value is None else value
        value = apply_op(start, op, operand) + slip()
        parts.append(f"{start}{op}{operand}={value}.")
    return " ".join(parts) + f" \\boxed{{{value}}}"


def make_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem of the given difficulty level."""
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return Problem(f"{a}+{b}", a + b, level)
    if level == 2:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if rng.random() < 0.5:
            return Problem(f"{a}+{b}", a + b, level)
        return Problem(f"{a}-{b}", a - b, level)
    if level == 3:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return Problem(f"{a}*{b}", a * b, level)
    if level == 4:
        a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(0, 99)
        return Problem(f"{a}*{b}+{c}", a * b + c, level)
    if level == CHAIN_LEVEL:
        value = rng.randint(0, 9)
        question = str(value)
        for _ in range(CHAIN_OPS):
            ops = [(op, d) for op in "+-" for d in range(1, 10) if 0 <= apply_op(value, op, d) <= CHAIN_MAX]
            op, d = rng.choice(ops)
            value = apply_op(value, op, d)
            question += f"{op}{d}"
        return Problem(question, value, level)
    raise ValueError(f"unknown level {level!r}; levels are {LEVELS}")


def make_problems(n: int, seed: int, levels: tuple[int, ...] = LEVELS) -> list[Problem]:
    """``n`` problems, levels drawn uniformly from ``levels``, reproducible from ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; levels are {LEVELS}")
    rng = random.Random(seed)
    return [make_problem(rng, rng.choice(levels)) for _ in range(n)]


# Disjoint splits of the *question space*: every question (e.g. "7*8") belongs to exactly one split,
# chosen by a stable hash of its text, so no test question is ever trained or validated on.
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.5, "val": 0.15, "test": 0.35}


def question_split(question: str) -> str:
    """The split (``train`` / ``val`` / ``test``) a question belongs to, by a stable hash of its text."""
    u = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "little") / 2**64
    if u < SPLIT_FRACTIONS["train"]:
        return "train"
    if u < SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["val"]:
        return "val"
    return "test"


def all_questions(levels: tuple[int, ...] = LEVELS) -> list[Problem]:
    """Every distinct problem of the given levels, in a fixed order (levels 2 and 4 are large)."""
    out: list[Problem] = []
    for level in levels:
        if level == 1:
            out += [Problem(f"{a}+{b}", a + b, 1) for a in range(10) for b in range(10)]
        elif level == 2:
            out += [Problem(f"{a}{op}{b}", apply_op(a, op, b), 2) for a in range(100) for b in range(100) for op in "+-"]
        elif level == 3:
            out += [Problem(f"{a}*{b}", a * b, 3) for a in range(2, 13) for b in range(2, 13)]
        elif level == 4:
            out += [Problem(f"{a}*{b}+{c}", a * b + c, 4) for a in range(2, 13) for b in range(2, 13) for c in range(100)]
        elif level == CHAIN_LEVEL:
            chains = [(str(a), a) for a in range(10)]
            for _ in range(CHAIN_OPS):
                chains = [
                    (f"{q}{op}{d}", apply_op(v, op, d))
                    for q, v in chains for op in "+-" for d in range(1, 10)
                    if 0 <= apply_op(v, op, d) <= CHAIN_MAX
                ]  # fmt: skip
            out += [Problem(q, v, CHAIN_LEVEL) for q, v in chains]
        else:
            raise ValueError(f"unknown level {level!r}; levels are {LEVELS}")
    return out


def make_split_problems(n: int, seed: int, levels: tuple[int, ...], split: str, unique: bool = False) -> list[Problem]:
    """``n`` problems drawn as :func:`make_problems` draws them, keeping only questions of ``split``
    (``unique``: each question at most once)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose one of {list(SPLITS)}")
    if not any(question_split(p.question) == split for p in all_questions(levels)):
        raise ValueError(f"no question of levels {levels} falls in split {split!r}")
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[str] = set()
    while len(out) < n:
        p = make_problem(rng, rng.choice(levels))
        if question_split(p.question) == split and not (unique and p.question in seen):
            out.append(p)
            seen.add(p.question)
    return out


def split_questions(levels: tuple[int, ...], split: str) -> list[Problem]:
    """Every distinct question of ``split`` (levels 1 and 3 only: the others have too many to list)."""
    if any(l in (2, 4) for l in levels):
        raise ValueError(f"levels {levels}: listing every question is only supported for levels 1 and 3")
    return [p for p in all_questions(levels) if question_split(p.question) == split]


def to_verl_row(problem: Problem, split: str, index: int) -> dict[str, Any]:
    """One row in verl's RL parquet schema (chat ``prompt``, ``reward_model``, ``data_source``)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": problem.prompt}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(problem.answer)},
        "extra_info": {"split": split, "index": index, "level": problem.level, "question": problem.question},
    }


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (without nested braces) in ``text``, or None."""
    found = _BOXED.findall(text)
    return found[-1].strip() if found else None


def is_correct(response: str, ground_truth: str | int) -> bool:
    """Exact integer check of the last ``\\boxed{}`` against the ground truth."""
    pred = extract_boxed(response)
    if pred is None:
        return False
    try:
        return int(pred) == int(str(ground_truth).strip())
    except ValueError:
        return False


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **_: Any) -> dict:
    """verl reward function (``reward.custom_reward_function``): DAPO's ±1 reward and ``acc``.

    Returns the dict verl's DAPO reward manager expects: ``score`` (+1 correct, -1 otherwise),
    ``acc`` (bool, the ``filter_groups`` metric) and ``pred`` (the extracted answer or "").
    """
    correct = is_correct(solution_str, ground_truth)
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": extract_boxed(solution_str) or ""}
