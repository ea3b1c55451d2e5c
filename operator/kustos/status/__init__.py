"""Pure status computation: (resource, what the cluster reports) -> status. No I/O."""
