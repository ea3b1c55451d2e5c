"""Kustos: serve machine-learning models on Kubernetes and govern them."""

__version__ = "0.1.0"
