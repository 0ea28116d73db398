"""A simulated Ctrl-C for resume tests: the training engine sees a stop request after a given number of steps."""

from __future__ import annotations

from cryoscape.train import engine as engine_module


def stop_after(monkeypatch, steps: int):
    """Make the engine see a stop request (Ctrl-C) after ``steps`` training steps of this process; returns the real
    ``broadcast_flag`` (``monkeypatch.setattr(engine_module, "broadcast_flag", real)`` lifts the stop)."""
    calls = {"n": 0}
    real = engine_module.broadcast_flag

    def flag(value, info, device):
        calls["n"] += 1
        return real(value, info, device) or calls["n"] == steps

    monkeypatch.setattr(engine_module, "broadcast_flag", flag)
    return real
