"""The drift sidecar `kustos drift`: alibi-detect on the inputs a model server receives.

Runs in its own environment (alibi-detect pins numpy < 2): nothing in this package imports
alibi_detect at module import time; detectors.py imports it when a detector is built.
"""
