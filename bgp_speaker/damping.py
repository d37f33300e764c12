"""Route flap damping for pod prefixes, after RFC 2439: pure functions over frozen values.

Every withdrawal of a prefix (its pod went away, turned NotReady, or lost its host route) adds
``penalty`` to the prefix's figure of merit, which halves every ``half_life`` seconds.  When the figure
goes above ``suppress`` the prefix is *suppressed*: it is not announced again until the figure has
decayed below ``reuse``.  The figure never exceeds the ceiling ``reuse * 2 ** (max_suppress /
half_life)``, so no prefix stays suppressed longer than ``max_suppress`` after its last withdrawal.

Only withdrawals are penalised: a prefix that has never been withdrawn (a new pod's address) has no
state and is announced at once, and the first flaps of a prefix cost nothing but penalty points.
Time is a number of seconds from a monotonic clock the caller passes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DampingParams", "FlapState", "is_suppressed", "penalty_at", "reuse_at", "stale", "withdrawn"]


@dataclass(frozen=True)
class DampingParams:
    """The knobs (Cisco's and FRR's defaults: 15 min half-life, 750 reuse, 2000 suppress, 60 min)."""

    half_life: float = 900.0
    reuse: float = 750.0
    suppress: float = 2000.0
    max_suppress: float = 3600.0
    penalty: float = 1000.0  # added by each withdrawal

    @property
    def ceiling(self) -> float:
        """The highest figure of merit: from it, decay reaches ``reuse`` in ``max_suppress``."""
        return float(self.reuse * 2.0 ** (self.max_suppress / self.half_life))

    def problem(self) -> tuple[str, str] | None:
        """(field, reason) when the combination cannot work, else None."""
        if self.half_life <= 0:
            return "halfLife", "must be above 0"
        if self.penalty <= 0:
            return "penalty", "must be above 0"
        if self.max_suppress <= 0:
            return "maxSuppress", "must be above 0"
        if not 0 < self.reuse < self.suppress:
            return "reuse", f"must be above 0 and below suppress ({self.suppress:g}), not {self.reuse:g}"
        if self.max_suppress / self.half_life > 512:
            return "maxSuppress", "must be at most 512 half-lives"
        if self.ceiling <= self.suppress:
            return (
                "suppress",
                f"{self.suppress:g} is not below the ceiling reuse * 2^(maxSuppress/halfLife) = "
                f"{self.ceiling:.0f}: no prefix could ever be suppressed",
            )
        return None


@dataclass(frozen=True)
class FlapState:
    """One prefix's history: the figure of merit as of ``at``, and whether it is suppressed."""

    penalty: float = 0.0
    at: float = 0.0
    suppressed: bool = False
    withdrawals: int = 0


def penalty_at(state: FlapState | None, now: float, params: DampingParams) -> float:
    """The figure of merit at ``now`` (exponential decay since the last change)."""
    if state is None:
        return 0.0
    elapsed = max(0.0, now - state.at)
    return float(state.penalty * 2.0 ** (-elapsed / params.half_life))


def is_suppressed(state: FlapState | None, now: float, params: DampingParams) -> bool:
    """Suppressed until the figure has decayed to ``reuse`` (hysteresis: not back at ``suppress``)."""
    until = reuse_at(state, params)
    return until is not None and now < until


def withdrawn(state: FlapState | None, now: float, params: DampingParams) -> FlapState:
    """The state after one more withdrawal at ``now``."""
    figure = min(params.ceiling, penalty_at(state, now, params) + params.penalty)
    suppressed = is_suppressed(state, now, params) or figure > params.suppress
    count = (state.withdrawals if state is not None else 0) + 1
    return FlapState(penalty=figure, at=now, suppressed=suppressed, withdrawals=count)


def reuse_at(state: FlapState | None, params: DampingParams) -> float | None:
    """When a suppressed prefix may be announced again (None: it is not suppressed)."""
    if state is None or not state.suppressed or state.penalty <= params.reuse:
        return None
    return state.at + params.half_life * math.log2(state.penalty / params.reuse)


def stale(state: FlapState, now: float, params: DampingParams) -> bool:
    """True once the history no longer matters (not suppressed, figure below half of ``reuse``):
    the caller may forget it, so the table does not grow with every address ever used."""
    return not is_suppressed(state, now, params) and penalty_at(state, now, params) < params.reuse / 2
