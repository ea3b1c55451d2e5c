"""What every handler shares: the operator config, loaded once at start-up."""

from __future__ import annotations

from kustos.config import OperatorConfig

_config = OperatorConfig()


def config() -> OperatorConfig:
    return _config


def set_config(cfg: OperatorConfig) -> None:
    global _config
    _config = cfg


def backoff(retry: int, base: float = 2.0, cap: float = 600.0) -> float:
    """Exponential backoff for retried reconciles: 2 s, 4 s, 8 s ... capped at 10 min."""
    return float(min(cap, base * 2 ** min(retry, 16)))
