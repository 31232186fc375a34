"""Plain data shared by every layer: extent maps and sizes (standard library and blake3 only)."""
