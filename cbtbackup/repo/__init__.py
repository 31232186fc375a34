"""Storage: the :class:`Store` interface with its backends, and the repository format on top of it."""
