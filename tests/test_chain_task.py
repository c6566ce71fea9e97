"""The chain task (level 5 of the synthetic data) and the named embedded recipes."""

from __future__ import annotations

import itertools
import random

import pytest

from reweight.data.synthetic import (
    CHAIN_LEVEL,
    CHAIN_MAX,
    CHAIN_OPS,
    Problem,
    all_questions,
    chain_steps,
    compute_score,
    make_problem,
    make_split_problems,
    worked_solution,
)


def _naive_chains() -> dict[str, int]:
    """Every chain question by brute force over all operand/operator sequences, with Python's eval."""
    out = {}
    for start in range(10):
        for ops in itertools.product("+-", repeat=CHAIN_OPS):
            for operands in itertools.product(range(1, 10), repeat=CHAIN_OPS):
                q, ok = str(start), True
                for op, d in zip(ops, operands):
                    q += f"{op}{d}"
                    ok = ok and 0 <= eval(q) <= CHAIN_MAX  # every running value in range
                if ok:
                    out[q] = eval(q)
    return out


def test_every_chain_question_is_enumerated_once_with_its_value():
    naive = _naive_chains()
    listed = all_questions((CHAIN_LEVEL,))
    assert len(listed) == len({p.question for p in listed}) == len(naive)
    assert {p.question: p.answer for p in listed} == naive


def test_drawn_chains_are_valid_and_cover_the_space():
    rng = random.Random(0)
    naive = _naive_chains()
    drawn = [make_problem(rng, CHAIN_LEVEL) for _ in range(3000)]
    assert all(naive[p.question] == p.answer for p in drawn)
    assert len({p.question for p in drawn}) > 2000  # not a handful of repeated questions


def test_the_worked_solution_writes_every_step_and_scores_right():
    p = Problem("4+5-3+2", 8, CHAIN_LEVEL)
    assert chain_steps(p.question) == [(4, "+", 5), (9, "-", 3), (6, "+", 2)]
    assert p.solution == "4+5=9. 9-3=6. 6+2=8. \\boxed{8}"
    assert compute_score("synthetic_arith", p.solution, "8")["score"] == 1.0


def test_a_slip_carries_through_the_chain_to_a_wrong_answer():
    p = Problem("4+5-3+2", 8, CHAIN_LEVEL)
    slips = iter([0, 1, 0])  # the second result written one too high
    text = worked_solution(p, slip=lambda: next(slips))
    assert text == "4+5=9. 9-3=7. 7+2=9. \\boxed{9}"
    assert compute_score("synthetic_arith", text, "8")["score"] == -1.0


def test_the_answer_only_levels_keep_their_solution_text():
    assert Problem("12+7", 19, 2).solution == "12+7=19. \\boxed{19}"
    assert worked_solution(Problem("3*4", 12, 3), slip=lambda: -2) == "3*4=10. \\boxed{10}"


def test_unique_split_draws_hold_distinct_questions_of_the_split():
    from reweight.data.synthetic import question_split

    drawn = make_split_problems(300, 5, (CHAIN_LEVEL,), "test", unique=True)
    assert len({p.question for p in drawn}) == 300
    assert all(question_split(p.question) == "test" for p in drawn)


def test_the_embedded_task_is_chosen_by_name_and_a_bad_name_is_refused():
    from omegaconf import OmegaConf

    from reweight.embedded import RECIPES, Recipe, recipe_for

    assert recipe_for(OmegaConf.create({})) == Recipe() == RECIPES["chain"]
    assert recipe_for(OmegaConf.create({"reweight": {"embedded": {"task": "arith"}}})).levels == (1, 3)
    assert RECIPES["chain"].key() != RECIPES["arith"].key()
    with pytest.raises(ValueError, match=r"reweight\.embedded\.task='nope'"):
        recipe_for(OmegaConf.create({"reweight": {"embedded": {"task": "nope"}}}))


def test_held_out_chain_splits_are_disjoint_from_training(tmp_path):
    from reweight.embedded import RECIPES, held_out_problems
    from reweight.data.synthetic import make_split_problems as draw

    recipe = RECIPES["chain"]
    test = held_out_problems(recipe, "test")
    train = draw(recipe.n_train, recipe.data_seed, recipe.levels, "train")
    assert len(test) == recipe.n_test == len({p.question for p in test})
    assert not {p.question for p in test} & {p.question for p in train}
