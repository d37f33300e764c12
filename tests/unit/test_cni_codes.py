"""Allocation failures become CNI codes by their typed reason, through one table."""

from __future__ import annotations

import pytest

from cni import wire
from ipam.errors import AllocationError, AllocationReason, Invalid, StoreUnavailable
from spiderbgp.ipam_backend import _backend_error


@pytest.mark.parametrize(
    ("reason", "code", "status"),
    [
        (AllocationReason.EXHAUSTED, wire.CODE_NO_IP_AVAILABLE, 422),
        (AllocationReason.AWAITING_POOL, wire.CODE_TRY_AGAIN, 503),
        (AllocationReason.NO_POOL, wire.CODE_NO_POOL, 422),
        (AllocationReason.POD_NOT_FOUND, wire.CODE_POD_NOT_FOUND, 503),
        (AllocationReason.POD_DEAD, wire.CODE_NO_POOL, 422),
        (AllocationReason.UID_MISMATCH, wire.CODE_TRY_AGAIN, 503),
        (AllocationReason.CONFLICT, wire.CODE_TRY_AGAIN, 503),
        (AllocationReason.MISMATCH, wire.CODE_RESERVATION_MISMATCH, 409),
        (AllocationReason.OTHER, wire.CODE_NO_IP_AVAILABLE, 422),
    ],
)
def test_every_reason_has_its_code(reason: AllocationReason, code: int, status: int) -> None:
    err = _backend_error(AllocationError("pool p: all IP addresses used out", reason=reason))
    assert (err.code, err.http_status, err.details) == (code, status, "pool p: all IP addresses used out")
    # retryable failures are exactly those answered 503
    assert AllocationError("x", reason=reason).retryable is (status == 503)


def test_the_message_text_does_not_choose_the_code() -> None:
    err = _backend_error(AllocationError("all IP addresses used out", reason=AllocationReason.NO_POOL))
    assert err.code == wire.CODE_NO_POOL


@pytest.mark.parametrize("reason", list(AllocationReason))
def test_check_failures_are_mismatches_unless_a_retry_can_mend_them(reason: AllocationReason) -> None:
    err = _backend_error(AllocationError("x", reason=reason), check=True)
    if AllocationError("x", reason=reason).retryable:
        plain = _backend_error(AllocationError("x", reason=reason))
        assert (err.code, err.http_status) == (plain.code, plain.http_status)
    else:
        assert (err.code, err.http_status) == (wire.CODE_RESERVATION_MISMATCH, 409)


def test_other_ipam_errors() -> None:
    assert _backend_error(StoreUnavailable("api down")).code == wire.CODE_TRY_AGAIN
    assert _backend_error(Invalid("SpiderIPPool", "p", "spec.ips", "bad")).code == wire.CODE_NO_POOL
