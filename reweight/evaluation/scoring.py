"""Answer checking: is a response correct for a ground truth, per ``data_source``.

Checkers are pluggable like verl's reward functions: :func:`register_checker` maps a
``data_source`` name to a function ``(response, ground_truth) -> bool``. Unregistered sources
(``math_dapo``, ``aime24``, ``aime25``, ``amc``, anything else) fall back to :func:`math_checker`:
the last ``\\boxed{...}`` of the response (nested braces handled), verified against the ground
truth with the ``math_verify`` package (``parse`` + ``verify``), so ``\\frac{1}{2}``, ``0.5`` and
``1/2`` are the same answer and so are ``2\\sqrt{2}`` and ``\\sqrt{8}``. The synthetic arithmetic
task uses its own exact integer checker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from reweight.data import synthetic

Checker = Callable[[str, str], bool]

_CHECKERS: dict[str, Checker] = {}
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def register_checker(data_source: str, checker: Checker | None = None):
    """Register ``checker(response, ground_truth) -> bool`` for ``data_source``.

    Usable directly (``register_checker("x", fn)``) or as a decorator (``@register_checker("x")``).
    Re-registering a name replaces the previous checker.
    """
    if not isinstance(data_source, str) or not data_source:
        raise ValueError(f"data_source must be a non-empty string, got {data_source!r}")

    def _register(fn: Checker) -> Checker:
        _CHECKERS[data_source] = fn
        return fn

    return _register(checker) if checker is not None else _register


def get_checker(data_source: str | None) -> Checker:
    """The checker registered for ``data_source``, or :func:`math_checker` when none is."""
    return _CHECKERS.get(data_source or "", math_checker)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces kept.

    Returns None when there is no box or the last box is unbalanced (truncated response).
    Also accepts the brace-less form ``\\boxed 5`` (content up to the next whitespace or ``$``).
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
        return None  # unbalanced: the box was never closed
    if i < len(text) and text[i] == " ":
        rest = text[i:].strip()
        token = rest.split()[0] if rest else ""
        token = token.split("$")[0]
        return token or None
    return None


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s


def _normalise(s: str) -> str:
    return "".join(_strip_math_delimiters(s).split()).rstrip(".")


def math_checker(response: str, ground_truth: str) -> bool:
    """Last ``\\boxed{}`` of ``response`` against ``ground_truth`` by ``math_verify``.

    No box → False. When ``math_verify`` can parse neither side (free text answers), an exact
    whitespace-insensitive string comparison decides. ``math_verify``'s timeouts use SIGALRM,
    which only works in the main thread; elsewhere they are disabled.
    """
    from math_verify import parse, verify

    pred = last_boxed(response)
    if pred is None:
        return False
    gt = str(ground_truth)
    gt_inner = last_boxed(gt)
    gt = _strip_math_delimiters(gt_inner if gt_inner is not None else gt)
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        gold_parsed = parse(f"${gt}$", parsing_timeout=timeout)
        pred_parsed = parse(f"${_strip_math_delimiters(pred)}$", parsing_timeout=timeout)
        if gold_parsed and pred_parsed:
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # math_verify raises on pathological input; fall back to string equality
        pass
    return _normalise(pred) == _normalise(gt)


def synthetic_checker(response: str, ground_truth: str) -> bool:
    """The synthetic arithmetic task's exact integer checker."""
    return synthetic.is_correct(response, ground_truth)


register_checker(synthetic.DATA_SOURCE, synthetic_checker)


# How a response is judged, one vocabulary with the training reward's ``scorer`` key:
#   dapo  - exactly the training reward (reweight.reward.compute_score) with DAPO's rule (the default)
#   verl  - the training reward with verl 0.9.1's lenient math_dapo (\boxed{} fallback)
#   boxed - the last \boxed{} verified with math_verify (the checker registry)
# For data sources the training reward scores itself (the synthetic task, DAPO-Math and its
# validation sets) ``dapo`` / ``verl`` call that reward function, so evaluation and training agree by
# construction; other sources have no training rule here and are scored by the checker registry.
SCORERS = ("dapo", "verl", "boxed")
DEFAULT_SCORER = "dapo"


def check_scorer(scorer: str) -> str:
    if scorer not in SCORERS:
        raise ValueError(f"scorer={scorer!r} is not known; choose one of {list(SCORERS)}")
    return scorer


def is_correct(response: str, ground_truth: str, data_source: str | None = None, scorer: str = DEFAULT_SCORER) -> bool:
    """Whether ``response`` answers ``ground_truth`` correctly for ``data_source`` under ``scorer``.

    ``dapo`` / ``verl``: the training reward's ``acc`` where the training reward knows the source;
    ``boxed``, or a source the training reward does not know: the checker registered for
    ``data_source`` (None or unregistered: the math checker, last ``\\boxed{}`` + math_verify).
    """
    check_scorer(scorer)
    if response is None:
        return False
    if scorer != "boxed" and data_source in _reward_sources():
        from reweight.reward import compute_score

        return bool(compute_score(data_source, str(response), str(ground_truth), scorer=scorer)["acc"])
    return bool(get_checker(data_source)(str(response), str(ground_truth)))


def _reward_sources() -> tuple[str, ...]:
    from reweight.reward import MATH_SOURCES

    return (synthetic.DATA_SOURCE, *MATH_SOURCES)
