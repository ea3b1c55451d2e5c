"""Tests of the registry parts against real processes on loopback."""
