"""Fixtures: real redis-server and real gRPC services on free ports, tiny random-weight
Llama models for fast engine tests, and the real SmolLM2 stack for the marked tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tandem.shared.models import DEFAULT_MODEL, load_tokenizer, resolve_model
from tandem.shared.process import RedisProcess, ServiceProcess, free_port
from tandem.v1 import router_pb2_grpc

# First start converts the GGUF for the cloud (~40 s); later starts hit the cache.
READY_TIMEOUT_S = 600.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/install.sh installs it)")
    server = RedisProcess(free_port(), tmp_path_factory.mktemp("redis"))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest, redis_server: RedisProcess):  # type: ignore[no-untyped-def]
    """A state-store constructor, for each backend (a Redis client belongs to the event
    loop that uses it, so each test builds its own)."""
    from tandem.router.state.memory import MemoryStateStore
    from tandem.router.state.redis_store import RedisStateStore

    if request.param == "memory":
        return MemoryStateStore
    # Generous timeouts: CI machines are busy; production uses the 0.25 s default.
    return lambda: RedisStateStore(redis_server.url, timeout_s=2.0)


@pytest.fixture(scope="session")
def smollm2_tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A 2-layer random-weight Llama with SmolLM2's tokenizer (vocab 49152), saved as an
    HF folder: fast, and exercises the same loading code as a real model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def start_services(workdir: Path, specs: list[tuple[str, list[str]]]) -> list[ServiceProcess]:
    """Start services in order, each on a free port; stop all if one fails."""
    started: list[ServiceProcess] = []
    try:
        for name, args in specs:
            service = ServiceProcess(name, ["--port", "0", "--metrics-port", "0", *args], workdir)
            started.append(service)
            service.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        for service in started:
            service.stop()
        raise
    return started


class Stack:
    """Running cloud, edge and router services (and their addresses)."""

    def __init__(self, services: list[ServiceProcess]) -> None:
        self.by_name = {s.name: s for s in services}
        self.channel = grpc.insecure_channel(self.by_name["router"].address)
        self.router = router_pb2_grpc.RouterStub(self.channel)

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.by_name[name]

    def stop(self) -> None:
        self.channel.close()
        for service in reversed(list(self.by_name.values())):
            service.stop()


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Iterator[Stack]:
    """The real SmolLM2 stack: cloud (transformers), edge (llama.cpp), router (Redis)."""
    workdir = tmp_path_factory.mktemp("stack")
    cloud, edge = start_services(workdir, [("cloud", []), ("edge", [])])
    # Fixed draft length: what these tests check must not depend on the machine's load
    # (the adaptive controller is unit-tested, and on by default elsewhere).
    router = start_services(workdir, [("router", [
        "--cloud-address", cloud.address, "--edge-address", edge.address,
        "--state", redis_server.url, "--no-adaptive-draft"])])[0]
    stack = Stack([cloud, edge, router])
    yield stack
    stack.stop()
