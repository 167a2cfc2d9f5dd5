"""The study tools, each run as ``python -m tools.NAME`` from the repository root (README)."""
