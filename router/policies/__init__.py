"""Routing policies: one module per policy, one registry (see base.py)."""
