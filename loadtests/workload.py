"""What the load-test users send: prompt sets and mixes, chat sessions, policies, arrival
pacing, the request budget and the seed. Pure Python (no locust, no gRPC), so it is
tested without a stack."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# Prompt sets shipped in loadtests/data/, usable by name: `--prompts mixed`.
BUILTIN_PROMPT_SETS = ("mixed", "chats")


@dataclass(frozen=True)
class Prompt:
    """One single-turn request: its text, its tags (e.g. easy/hard, short/long) and an
    optional max_tokens that overrides the workload's."""

    text: str
    tags: tuple[str, ...] = ()
    max_tokens: int | None = None


@dataclass(frozen=True)
class Chat:
    """A multi-turn conversation sent turn by turn in one router session. Chats of a set
    share their system prompt, so every turn after the first extends a shared prefix."""

    turns: tuple[str, ...]
    system: str = ""
    tags: tuple[str, ...] = ()


@dataclass
class PromptSet:
    prompts: list[Prompt] = field(default_factory=list)
    chats: list[Chat] = field(default_factory=list)

    def tags(self) -> set[str]:
        return {t for p in self.prompts for t in p.tags}


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A JSONL prompt set: a built-in name or a file. Each line is either
    {"prompt": str, "tags": [str], "max_tokens": int?} or
    {"chat": [str, ...], "system": str?, "tags": [str]?}."""
    if name_or_path in BUILTIN_PROMPT_SETS:
        text = resources.files("tandem.loadtests").joinpath(f"data/{name_or_path}.jsonl").read_text()
    else:
        text = Path(name_or_path).read_text()
    result = PromptSet()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        tags = tuple(row.get("tags", ()))
        if "prompt" in row:
            result.prompts.append(Prompt(row["prompt"], tags, row.get("max_tokens")))
        elif "chat" in row:
            result.chats.append(Chat(tuple(row["chat"]), row.get("system", ""), tags))
        else:
            raise ValueError(f"{name_or_path}:{number}: needs a 'prompt' or a 'chat' field")
    if not result.prompts and not result.chats:
        raise ValueError(f"{name_or_path}: no prompts")
    return result


def parse_weights(spec: str) -> dict[str, float]:
    """'edge' -> {edge: 1}; 'easy=3,hard=1' -> {easy: 3, hard: 1} (weights > 0)."""
    weights: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition("=")
        weight = float(value) if value else 1.0
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"weight of {name!r} must be a positive number, got {value!r}")
        weights[name.strip()] = weight
    if not weights:
        raise ValueError("empty weight list")
    return weights


def weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class PromptPicker:
    """Draws prompts by tag mix: a tag by weight, then a prompt carrying it uniformly.
    With no mix every prompt is equally likely."""

    def __init__(self, prompts: list[Prompt], mix: dict[str, float] | None) -> None:
        if not prompts:
            raise ValueError("the prompt set has no single-turn prompts")
        self.prompts = prompts
        self.mix = mix
        if mix:
            missing = [t for t in mix if not any(t in p.tags for p in prompts)]
            if missing:
                raise ValueError(f"mix tags {missing} match no prompt; known tags: "
                                 f"{sorted({t for p in prompts for t in p.tags})}")

    def pick(self, rng: random.Random) -> Prompt:
        if not self.mix:
            return rng.choice(self.prompts)
        tag = weighted_choice(rng, self.mix)
        return rng.choice([p for p in self.prompts if tag in p.tags])


class RequestBudget:
    """A fixed number of requests shared by every user of the run (None: unlimited, the
    run is bounded by its duration). take() reserves one; finish() reports one done and
    says whether it was the last."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.issued = 0
        self.finished = 0
        self._lock = threading.Lock()  # users are greenlets, but keep it correct anyway

    def take(self) -> bool:
        with self._lock:
            if self.total is not None and self.issued >= self.total:
                return False
            self.issued += 1
            return True

    def finish(self) -> bool:
        with self._lock:
            self.finished += 1
            return self.total is not None and self.finished >= self.total


class Pacer:
    """When a user starts its next request. Constant concurrency (rate None): at once.
    Poisson arrivals at `rate` req/s over `users` users: each user is an independent
    Poisson process of rate rate/users (their superposition is Poisson at `rate`), paced
    on its own schedule so a slow answer does not delay later arrivals; a user still has
    at most one request in flight, so `users` caps the concurrency."""

    def __init__(self, rate: float | None, users: int, rng: random.Random) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("request rate must be > 0")
        self.mean_gap = users / rate if rate else 0.0
        self.rng = rng
        self.next_start: float | None = None

    def wait_seconds(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if not self.mean_gap:
            return 0.0
        if self.next_start is None:
            self.next_start = now
        self.next_start += self.rng.expovariate(1.0 / self.mean_gap)
        return max(0.0, self.next_start - now)


@dataclass
class Workload:
    """Everything a run's users need to know, built from the locust options."""

    target: str = "router"
    prompts: PromptSet = field(default_factory=PromptSet)
    mix: dict[str, float] | None = None
    policies: dict[str, float] = field(default_factory=lambda: {"": 1.0})
    chat_policies: dict[str, float] = field(default_factory=lambda: {"": 1.0})
    max_tokens: int | None = 64
    temperature: float | None = None
    timeout_s: float = 300.0
    seed: int = 0
    users: int = 1
    request_rate: float | None = None
    budget: RequestBudget = field(default_factory=lambda: RequestBudget(None))

    def __post_init__(self) -> None:
        if self.target not in ("router", "cloud", "openai"):
            raise ValueError(f"target must be router, cloud or openai, got {self.target!r}")
        self.picker = PromptPicker(self.prompts.prompts, self.mix) if self.prompts.prompts else None

    def user_rng(self, index: int) -> random.Random:
        """Each user's own reproducible stream of choices."""
        return random.Random(f"{self.seed}:{index}")

    @classmethod
    def from_options(cls, options: Any) -> Workload:
        prompts = load_prompt_set(options.tandem_prompts)
        chats = options.tandem_chats
        if chats:
            prompts.chats.extend(load_prompt_set(chats).chats)
        policy = options.tandem_policy or ""
        return cls(
            target=options.tandem_target, prompts=prompts,
            mix=parse_weights(options.tandem_mix) if options.tandem_mix else None,
            policies=parse_weights(policy) if policy else {"": 1.0},
            chat_policies=parse_weights(options.tandem_chat_policy or policy or "") if (
                options.tandem_chat_policy or policy) else {"": 1.0},
            max_tokens=options.tandem_max_tokens or None,
            temperature=options.tandem_temperature, timeout_s=options.tandem_timeout,
            seed=options.tandem_seed, users=max(1, options.num_users or 1),
            request_rate=options.tandem_request_rate or None,
            budget=RequestBudget(options.tandem_requests or None))
