"""Gated progressive delivery: pure parts (metrics windows, gates, the state machine, the
tracks a rollout renders). The controller is controllers/rollout.py."""
