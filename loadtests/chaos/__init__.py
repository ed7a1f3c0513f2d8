"""Chaos scenarios: what the stack promises under faults, measured. The reliability battery
(tests/reliability) runs them in CI sizes; `tandem chaos` runs them longer against a
running stack or one it starts (``--up``) and prints one JSON report."""
