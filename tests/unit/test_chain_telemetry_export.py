"""The chain exports its span batches fast enough for probes to read them at once."""

from __future__ import annotations

import logging

import pytest

from fixtures.chain import telemetry


def test_batches_leave_every_50_ms_when_the_schedule_delay_is_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OTel SDK default OTEL_BSP_SCHEDULE_DELAY is 5000 ms; the chain's default is 50 ms."""
    monkeypatch.delenv("OTEL_BSP_SCHEDULE_DELAY", raising=False)
    assert telemetry.schedule_delay_ms() == 50


def test_a_set_schedule_delay_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    assert telemetry.schedule_delay_ms() == 250


@pytest.mark.parametrize("raw", ["soon", "0", "-5"])
def test_an_unusable_schedule_delay_is_treated_as_unset_with_a_warning(
        raw: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """OTel configuration spec: an invalid env value SHOULD be warned about and ignored."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", raw)
    with caplog.at_level(logging.WARNING, logger=telemetry.__name__):
        assert telemetry.schedule_delay_ms() == 50
    assert f"OTEL_BSP_SCHEDULE_DELAY={raw!r}" in caplog.text
