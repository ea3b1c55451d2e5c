"""Kubernetes API access: every read and write Kustos makes goes through here."""
