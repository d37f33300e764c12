"""A benchmark figure beside the reference measured in the same run, their ratio, and its target.

Absolute speeds depend on the machine and on its load at the moment, so a target is put on the ratio
of a figure to a reference measured beside it in the same run (``at_least(0.5)``: the figure is at
least half the reference; ``at_most(1.5)``), or on the difference to it (``within(5.0)``: the figure
is at most 5 units above the reference).  Every comparison prints as one line::

    [met] IPAM service fill: 2,091 allocations/s; reference store alone (claims + endpoint): 3,614 allocations/s; ratio 0.58; target ratio >= 0.50

``python -m bench`` collects these lines from every benchmark into its summary (``VERDICT_LINE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Rule(Enum):
    RATIO_AT_LEAST = "ratio >="
    RATIO_AT_MOST = "ratio <="
    ABOVE_AT_MOST = "figure - reference <="


@dataclass(frozen=True)
class Target:
    rule: Rule
    bound: float
    unit: str = ""  # of the bound, for ABOVE_AT_MOST

    def met(self, figure: float, reference: float) -> bool:
        if self.rule is Rule.ABOVE_AT_MOST:
            return figure - reference <= self.bound
        ratio = figure / reference
        return ratio >= self.bound if self.rule is Rule.RATIO_AT_LEAST else ratio <= self.bound

    def text(self) -> str:
        if self.rule is Rule.ABOVE_AT_MOST:
            return f"target {self.rule.value} {self.bound:g} {self.unit}".rstrip()
        return f"target {self.rule.value} {self.bound:.2f}"


def at_least(bound: float) -> Target:
    """The figure is at least ``bound`` times the reference (for rates: higher is better)."""
    return Target(Rule.RATIO_AT_LEAST, bound)


def at_most(bound: float) -> Target:
    """The figure is at most ``bound`` times the reference (for times: lower is better)."""
    return Target(Rule.RATIO_AT_MOST, bound)


def within(bound: float, unit: str) -> Target:
    """The figure is at most ``bound`` (in ``unit``) above the reference."""
    return Target(Rule.ABOVE_AT_MOST, bound, unit)


@dataclass(frozen=True)
class Comparison:
    """One figure, the reference it is measured against in the same run, and the target on the two."""

    name: str
    figure: float
    reference_name: str
    reference: float
    unit: str
    target: Target | None = None
    digits: int = 0  # decimals the figure and the reference are printed with

    @property
    def ratio(self) -> float:
        return self.figure / self.reference if self.reference else float("inf")

    @property
    def met(self) -> bool | None:
        """None: no target (context only)."""
        if self.target is None:
            return None
        if self.reference <= 0 and self.target.rule is not Rule.ABOVE_AT_MOST:
            # a ratio needs a positive reference: a zero or negative one (a latency whose two clocks
            # disagree by more than the latency itself) tells nothing, and must not read as met
            return False
        return self.target.met(self.figure, self.reference)

    def line(self) -> str:
        verdict = {True: "[met]", False: "[MISSED]", None: "[context]"}[self.met]
        value = f"{{:,.{self.digits}f}}"
        parts = [
            f"{verdict} {self.name}: {value.format(self.figure)} {self.unit}",
            f"reference {self.reference_name}: {value.format(self.reference)} {self.unit}",
            f"ratio {self.ratio:.2f}",
        ]
        if self.target is not None and self.target.rule is Rule.ABOVE_AT_MOST:
            parts[-1] += f", difference {self.figure - self.reference:+.{max(self.digits, 1)}f} {self.unit}"
        if self.target is not None:
            parts.append(self.target.text())
        return "; ".join(parts)


VERDICT_LINE = re.compile(r"^\s*\[(met|MISSED|context)\] ")


def report(comparison: Comparison, indent: str = "") -> Comparison:
    """Print the comparison's line (flushed, so ``python -m bench`` sees it in order); returns it."""
    print(indent + comparison.line(), flush=True)
    return comparison
