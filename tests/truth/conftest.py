"""Tests of the truth parts against real processes on loopback."""
