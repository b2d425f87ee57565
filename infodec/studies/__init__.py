"""End-to-end studies importable from launchers and notebooks (``tradeoff``: [P1]'s tradeoff curves)."""
