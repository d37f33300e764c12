"""bgp_speaker.damping: RFC 2439 flap damping as pure functions over an injected clock, checked with
Hypothesis over arbitrary withdrawal histories; and the bgp.damping config section."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp_speaker.config import BgpConfigError, parse_bgp_config
from bgp_speaker.damping import (
    DampingParams,
    FlapState,
    is_suppressed,
    penalty_at,
    reuse_at,
    stale,
    withdrawn,
)

PARAMS = DampingParams(half_life=60.0, reuse=750.0, suppress=2000.0, max_suppress=240.0, penalty=1000.0)

params_st = st.builds(
    DampingParams,
    half_life=st.floats(1.0, 3600.0),
    reuse=st.floats(100.0, 1500.0),
    suppress=st.floats(1600.0, 5000.0),
    max_suppress=st.floats(60.0, 7200.0),
    penalty=st.floats(100.0, 3000.0),
).filter(lambda p: p.problem() is None)
gaps_st = st.lists(st.floats(0.0, 600.0), min_size=1, max_size=30)


def _history(params: DampingParams, gaps: list[float]) -> list[tuple[float, FlapState]]:
    """Withdrawals separated by ``gaps`` seconds: [(time, state after it)]."""
    now, state, out = 0.0, None, []
    for gap in gaps:
        now += gap
        state = withdrawn(state, now, params)
        out.append((now, state))
    return out


def test_no_history_is_never_suppressed() -> None:
    assert not is_suppressed(None, 0.0, PARAMS)
    assert penalty_at(None, 123.0, PARAMS) == 0.0
    assert reuse_at(None, PARAMS) is None


def test_two_quick_withdrawals_do_not_suppress_the_third_does() -> None:
    s1 = withdrawn(None, 0.0, PARAMS)
    s2 = withdrawn(s1, 1.0, PARAMS)
    assert not is_suppressed(s2, 1.0, PARAMS)  # 1000 + ~988 < 2000
    s3 = withdrawn(s2, 2.0, PARAMS)
    assert is_suppressed(s3, 2.0, PARAMS)
    until = reuse_at(s3, PARAMS)
    assert until is not None
    # ~2965 decays to 750 in log2(2965/750) half-lives
    assert until == pytest.approx(2.0 + 60.0 * math.log2(s3.penalty / 750.0))
    assert is_suppressed(s3, until - 0.01, PARAMS)
    assert not is_suppressed(s3, until, PARAMS)


@settings(max_examples=300, deadline=None)
@given(params_st, gaps_st, st.floats(0.0, 10_000.0))
def test_penalty_only_decays_between_withdrawals(
    params: DampingParams, gaps: list[float], later: float
) -> None:
    when, state = _history(params, gaps)[-1]
    assert penalty_at(state, when + later, params) <= penalty_at(state, when, params) + 1e-9
    assert penalty_at(state, when, params) <= params.ceiling + 1e-6


@settings(max_examples=300, deadline=None)
@given(params_st, gaps_st)
def test_never_suppressed_longer_than_max_suppress_after_the_last_withdrawal(
    params: DampingParams, gaps: list[float]
) -> None:
    when, state = _history(params, gaps)[-1]
    until = reuse_at(state, params)
    if until is not None:
        assert until - when <= params.max_suppress * (1 + 1e-9) + 1e-6
    assert not is_suppressed(state, when + params.max_suppress + 1e-3, params)


@settings(max_examples=300, deadline=None)
@given(params_st, gaps_st)
def test_suppressed_exactly_when_the_figure_crossed_suppress_and_has_not_decayed_to_reuse(
    params: DampingParams, gaps: list[float]
) -> None:
    previous: FlapState | None = None
    for when, state in _history(params, gaps):
        was = is_suppressed(previous, when, params)
        crossed = state.penalty > params.suppress
        assert is_suppressed(state, when, params) == (was or crossed)
        previous = state


@settings(max_examples=200, deadline=None)
@given(params_st, st.integers(1, 50))
def test_withdrawals_far_apart_are_never_suppressed_when_one_penalty_is_below_suppress(
    params: DampingParams, count: int
) -> None:
    if params.penalty > params.suppress:
        return
    # after 64 half-lives one penalty is as good as forgotten
    state = None
    for i in range(count):
        state = withdrawn(state, i * params.half_life * 64, params)
        assert not is_suppressed(state, i * params.half_life * 64, params)
        assert stale(state, (i + 1) * params.half_life * 64, params)


def test_config_section_parses_defaults_and_rejects_bad_combinations() -> None:
    base = {"asn": 64512, "nextHop": "172.16.13.11", "peers": [{"address": "172.16.13.1", "asn": 23000}]}
    off = parse_bgp_config(base, source="agent.yaml")
    assert off.damping is None and off.announce_when == "ready"
    on = parse_bgp_config({**base, "damping": {"halfLife": 30}}, source="agent.yaml")
    assert on.damping == DampingParams(half_life=30.0)
    assert parse_bgp_config({**base, "damping": {"enabled": False}}, source="agent.yaml").damping is None
    bad = [
        ({"reuse": 3000}, "bgp.damping.reuse: must be above 0 and below suppress (2000), not 3000"),
        ({"halfLife": 0}, "bgp.damping.halfLife: must be at least 0.001, not 0"),
        ({"halfLif": 3}, "bgp.damping.halfLif: unknown field (did you mean halfLife?)"),
        ({"maxSuppress": 60}, "bgp.damping.suppress: 2000 is not below the ceiling"),
        ({"enabled": "yes"}, "bgp.damping.enabled: must be true or false, not 'yes'"),
    ]
    for fields, message in bad:
        with pytest.raises(BgpConfigError) as err:
            parse_bgp_config({**base, "damping": fields}, source="agent.yaml")
        assert str(err.value).startswith(f"agent.yaml: {message}"), str(err.value)
    with pytest.raises(BgpConfigError) as err:
        parse_bgp_config({**base, "announceWhen": "running"}, source="agent.yaml")
    assert str(err.value) == "agent.yaml: bgp.announceWhen: must be one of ready, allocated, not 'running'"
