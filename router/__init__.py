"""The router: routing policies, scorers and Redis-backed state behind the Router service."""
