"""Command-line entry points (`tandem ...`)."""
