"""Command-line entry points; the scripts at the repository root call these."""
