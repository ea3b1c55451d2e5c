"""Vault (or OpenBao) access: Kubernetes auth login and KV v2 reads with hvac."""
