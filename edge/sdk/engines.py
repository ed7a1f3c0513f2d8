"""Where the SDK's requests run: ``LocalEngine`` (on-device: the edge model and the
router's policies in this process, only the cloud over gRPC) or ``RemoteEngine`` (a
Tandem router service). Both turn a router GenerateRequest into GenerateChunks."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal, Protocol

import grpc
from prometheus_client import CollectorRegistry

from tandem.shared.config import option
from tandem.shared.deadlines import Deadline
from tandem.shared.grpc_security import ChannelSecurity
from tandem.shared.grpc_server import CHANNEL_OPTIONS
from tandem.shared.limits import RequestLimits
from tandem.shared.models import DEFAULT_MODEL
from tandem.v1 import router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    from tandem.edge.config import EdgeConfig

logger = logging.getLogger(__name__)

MODES = ("on_device", "remote")


@dataclass
class ClientConfig(RequestLimits):
    """How a TandemClient runs (every field is also a keyword argument of the client)."""

    mode: Literal["on_device", "remote"] = option(
        "on_device", "on_device: edge model and policies in-process; remote: a router service.")
    router_address: str = option("127.0.0.1:50051", "remote: host:port of the Router service.")
    cloud_address: str = option("127.0.0.1:50052", "on_device: host:port of the Cloud service.")
    model: str = option(DEFAULT_MODEL, "on_device: packaged model alias or .gguf path.")
    model_sha256: str = option("", "on_device: refuse to load a model file with another sha256.")
    backend: str = option("llama.cpp", "on_device: edge backend (llama.cpp or torch).")
    threads: int = option(0, "on_device: compute threads for the edge model; 0 = all cores.")
    flash_attn: bool = option(
        False, "on_device, llama.cpp: flash attention (faster on the device; its drafts agree "
               "a little less with the cloud's model).")
    artifacts: str = option(
        "", "on_device, torch backend: folder written by `tandem compress` (empty: the fp32 "
            "weights, fully resident).")
    kv_budget: str = option(
        "1024", "on_device, torch backend: the KV cache holds at most this many tokens (H2O "
                "eviction: a recent window and the tokens that received the most attention), "
                "so a long chat stays within a fixed memory; a share such as 0.5 keeps that "
                "share of the tokens seen; empty keeps every token. The llama.cpp backend "
                "keeps the full cache (its API exposes no attention weights).")
    # A device holds less KV than a server: smaller defaults than RequestLimits'.
    context_window: int = option(4096, "on_device: longest prompt + answer, in tokens.")
    max_tokens_cap: int = option(2048, "Largest max_tokens a call may ask for.")
    policy: str = option("auto", "Policy for calls that name none.")
    deadline_s: float = option(60.0, "Deadline of calls that set none, in seconds.")
    tenant: str = option("", "Tenant every call is made for.")
    offline_fallback: bool = option(
        True, "on_device: answer from the edge (marked degraded) when the cloud is "
              "unreachable or too slow.")
    edge_reserve_s: float = option(
        2.0, "on_device: time kept back from cloud calls for the edge fallback (at most half "
             "the remaining deadline).")
    max_retries: int = option(2, "Retries of a call that failed UNAVAILABLE before streaming.")
    retry_backoff_s: float = option(0.2, "First retry delay; doubles each retry, jittered.")
    api_key: str = option("", "remote: the router's API key (sent as Authorization: Bearer).")
    tls_ca: str = option("", "PEM CA that the router's (remote) or the cloud's (on_device) "
                             "certificate must be signed by; empty: plaintext.")
    tls_cert: str = option("", "With tls_ca: this client's PEM certificate, for mTLS.")
    tls_key: str = option("", "With tls_cert: its private key.")
    metadata: dict[str, str] = field(default_factory=dict)  # sent with every call

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.deadline_s <= 0 or self.edge_reserve_s < 0:
            raise ValueError("deadline_s must be > 0 and edge_reserve_s >= 0")
        if self.max_retries < 0 or self.retry_backoff_s < 0:
            raise ValueError("max_retries and retry_backoff_s must be >= 0")
        if (self.tls_cert or self.tls_key) and not (self.tls_ca and self.tls_cert
                                                    and self.tls_key):
            raise ValueError("tls_cert and tls_key go together, with tls_ca")
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if path and not os.path.isfile(path):
                raise ValueError(f"TLS file not found: {path}")
        self.check_request_limits()

    def security(self) -> ChannelSecurity:
        """How this client's channel is secured (plaintext when no tls_ca)."""
        return ChannelSecurity(self.tls_ca or None, self.tls_cert or None, self.tls_key or None)


class Engine(Protocol):
    def stream(self, request: router_pb2.GenerateRequest, deadline: Deadline,
               metadata: dict[str, str]) -> AsyncIterator[router_pb2.GenerateChunk]: ...

    async def close(self) -> None: ...


class RemoteEngine:
    """A Tandem router service over gRPC."""

    def __init__(self, config: ClientConfig) -> None:
        self._channel = config.security().aio_channel(config.router_address, CHANNEL_OPTIONS)
        self._auth = (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()
        self._stub = router_pb2_grpc.RouterStub(self._channel)

    async def stream(self, request: router_pb2.GenerateRequest, deadline: Deadline,
                     metadata: dict[str, str]) -> AsyncIterator[router_pb2.GenerateChunk]:
        call = self._stub.GenerateStream(request, timeout=deadline.timeout(),
                                         metadata=(*self._auth, *metadata.items()) or None)
        try:
            async for chunk in call:
                yield chunk
        finally:
            call.cancel()  # an abandoned stream stops the router's work

    async def close(self) -> None:
        await self._channel.close()


def tier_limits(config: ClientConfig) -> dict[str, int]:
    """The client's request limits, for the in-process edge and router it builds."""
    return {f.name: getattr(config, f.name) for f in fields(RequestLimits)}


def edge_config_for(config: ClientConfig) -> EdgeConfig:
    """The in-process edge's configuration (EdgeConfig checks the combination)."""
    from tandem.edge.config import EdgeConfig

    return EdgeConfig(model=config.model, backend=config.backend, threads=config.threads,
                      slots=1,  # one device, one user: one sequence
                      flash_attn=config.flash_attn, artifacts=config.artifacts,
                      kv_budget=config.kv_budget if config.backend == "torch" else "",
                      **tier_limits(config))  # type: ignore[arg-type]


class LocalEngine:
    """The router's core with an in-process edge; only the cloud is remote."""

    def __init__(self, config: ClientConfig) -> None:
        from tandem.edge.backend import create_backend
        from tandem.edge.sdk.local_tiers import LocalTiers
        from tandem.edge.sdk.provisioning import print_progress, provision
        from tandem.edge.handler import EdgeHandler
        from tandem.router.config import RouterConfig
        from tandem.router.core import RouterCore
        from tandem.router.metrics import RouterMetrics
        from tandem.router.policies.base import create_policies
        from tandem.router.resources import build_resources
        from tandem.router.state.memory import MemoryStateStore
        from tandem.shared.models import eos_token_ids

        source = provision(config.model, sha256=config.model_sha256, progress=print_progress)
        edge_config = edge_config_for(config)
        router_config = RouterConfig(model=config.model, default_policy=config.policy,
                                     default_timeout_seconds=config.deadline_s,
                                     **tier_limits(config))  # type: ignore[arg-type]
        state = MemoryStateStore()  # sessions live on the device
        resources = build_resources(router_config, state)
        self.backend = create_backend(edge_config, source)
        tokenizer = resources.tokenizer
        edge = EdgeHandler(edge_config, self.backend, tokenizer, eos_token_ids(tokenizer),
                           CollectorRegistry())
        self.tiers = LocalTiers(edge, config.cloud_address, config.edge_reserve_s,
                                security=config.security())
        policies = create_policies(router_config, resources)
        if config.policy not in policies:
            raise ValueError(f"policy {config.policy!r} is not one of {sorted(policies)}")
        self.core = RouterCore(router_config, tokenizer, self.tiers, state, policies,
                               RouterMetrics(CollectorRegistry()))

    def stream(self, request: router_pb2.GenerateRequest, deadline: Deadline,
               metadata: dict[str, str]) -> AsyncIterator[router_pb2.GenerateChunk]:
        return self.core.stream(request, deadline)

    async def close(self) -> None:
        await self.tiers.close()
        self.backend.close()
