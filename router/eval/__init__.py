"""Cost/quality evaluation of routing: collecting labelled edge/cloud answers, training
and calibrating scorers, and the cascade evaluation (RouteLLM's APGR)."""
