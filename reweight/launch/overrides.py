"""Hydra command-line overrides: parsing and multirun expansion, with Hydra's own grammar.

A sweep is written exactly as for ``python -m verl.trainer.main_ppo --multirun``::

    actor_rollout_ref.actor.policy_loss.scheme=none,low_prob  seed=range(1,4)  actor_rollout_ref.actor.policy_loss.alpha=choice(0.1,0.2)

and expands to the Cartesian product of its discrete sweeps (Hydra's ``BasicSweeper`` order: the first
swept key varies slowest). Each point is a plain list of overrides that ``reweight-train`` accepts.
Continuous sweeps (``interval(...)``) and config-group globs have no finite list of points: refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class OverrideError(ValueError):
    """An override that cannot be parsed or used as asked."""


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: the overrides that produce it and the swept keys' values (as written)."""

    index: int
    overrides: tuple[str, ...]
    values: dict[str, str] = field(default_factory=dict)


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Parse with Hydra's ``OverridesParser``; raise :class:`OverrideError` naming the bad override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as e:
            raise OverrideError(f"cannot parse the override {text!r}: {e}") from e
    return parsed


def explicit_value(overrides: Sequence[str], key: str) -> str | None:
    """The value string the overrides assign to ``key`` (last one wins; ``+``/``++`` ignored), or None.

    A sweep over ``key`` or a deletion (``~key``) counts as no single value: raises
    :class:`OverrideError`, because a caller that needs the value cannot use either.
    """
    value = None
    for o in parse_overrides(overrides):
        if o.key_or_group != key:
            continue
        if o.is_delete():
            raise OverrideError(f"'{key}' is deleted by the override '~{key}'; it must have a value here")
        if o.is_sweep_override():
            raise OverrideError(f"'{key}' is swept ({o.input_line}); it must have a single value here")
        value = o.get_value_element_as_str()
    return value


def _override_text(o: Any, value: str | None) -> str:
    key = o.get_key_element()
    return key if value is None else f"{key}={value}"


def expand_sweep(overrides: Sequence[str]) -> list[SweepPoint]:
    """All points of the multirun ``overrides`` (one point, no values, if nothing is swept)."""
    from hydra.core.override_parser.types import ValueType

    choices: list[list[tuple[str, str | None]]] = []  # per override: [(override text, swept value or None)]
    for o in parse_overrides(overrides):
        if not o.is_sweep_override():
            value = None if o.is_delete() and o.value_type is None else o.get_value_element_as_str()
            choices.append([(_override_text(o, value), None)])
            continue
        if o.value_type == ValueType.INTERVAL_SWEEP:
            raise OverrideError(
                f"'{o.input_line}' is a continuous interval sweep: it has no finite list of points "
                f"(write the values, e.g. {o.key_or_group}=0.1,0.2, or range(...))"
            )
        if o.value_type == ValueType.GLOB_CHOICE_SWEEP:
            raise OverrideError(f"'{o.input_line}': glob sweeps are not supported here; list the options instead")
        values = list(o.sweep_string_iterator())
        if not values:
            raise OverrideError(f"'{o.input_line}' sweeps over no values")
        choices.append([(_override_text(o, v), v) for v in values])

    swept_keys = [o.key_or_group for o in parse_overrides(overrides) if o.is_sweep_override()]
    if len(set(swept_keys)) != len(swept_keys):
        raise OverrideError(f"a key is swept twice: {swept_keys}")

    points = []
    for index, combo in enumerate(itertools.product(*choices)):
        texts = tuple(text for text, _ in combo)
        values: dict[str, str] = {}
        parsed = parse_overrides(texts)
        for (_, value), o in zip(combo, parsed, strict=True):
            if value is not None:
                values[o.key_or_group] = value
        points.append(SweepPoint(index=index, overrides=texts, values=values))
    return points


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Shortest dotted suffix of each key that is unique among ``keys`` (``...policy_loss.alpha`` -> ``alpha``)."""
    names: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            candidate = ".".join(parts[-n:])
            clashes = [k for k in keys if k != key and (k == candidate or k.endswith("." + candidate))]
            if not clashes:
                names[key] = candidate
                break
        else:
            names[key] = key
    return names
