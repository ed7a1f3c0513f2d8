"""Router state shared by all replicas: sessions, rate limits and token budgets, the
response cache, the cascade threshold and its budget controller, policy statistics,
the replica each speculative session's KV lives on (affinity).

Redis holds it for a fleet (``redis_store``); a process-local store (``memory``) is the
single-process default and the fallback while Redis is down (``resilient``).
"""

from tandem.router.state.base import (RATE_LIMIT, TOKEN_BUDGET, Allowance, Completion, Limits,
                                      StateStore, Turn)
from tandem.router.state.factory import create_state_store

__all__ = ["RATE_LIMIT", "TOKEN_BUDGET", "Allowance", "Completion", "Limits", "StateStore",
           "Turn", "create_state_store"]
