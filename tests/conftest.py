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


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model's shape, fp32 weights and calibration on random token chunks (what
    `tandem compress` fits), for the torch edge runtime's tests."""
    import torch

    from tandem.edge.compress.calibration import calibrate
    from tandem.edge.torch_model import LlamaShape, dense_runtime, load_hf_state

    shape = LlamaShape.from_hf_config(tiny_model_dir)
    state = load_hf_state(tiny_model_dir)
    gen = torch.Generator().manual_seed(1)
    chunks = [torch.randint(0, shape.vocab, (48,), generator=gen).tolist() for _ in range(4)]
    return shape, state, calibrate(dense_runtime(shape, state), chunks)


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


def _certificate(name: str, key, issuer_name, issuer_key, ca: bool):  # type: ignore[no-untyped-def]
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_name or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Certificates made on the fly: a CA ("ca"), a tier's and the router's certificates
    signed by it ("tier", "router"; each with "<name>_key"), and a client certificate
    signed by another CA ("rogue"). Each certificate names localhost and 127.0.0.1."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("pki")
    paths: dict[str, str] = {}

    def write(name: str, cert, key) -> None:  # type: ignore[no-untyped-def]
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        paths[name], paths[f"{name}_key"] = str(folder / f"{name}.pem"), str(folder / f"{name}.key")

    for ca_name, leaves in (("ca", ("tier", "router")), ("rogue_ca", ("rogue",))):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(f"Tandem test {ca_name}", ca_key, None, None, ca=True)
        write(ca_name, ca_cert, ca_key)
        for leaf in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            write(leaf, _certificate(leaf, key, ca_cert.subject, ca_key, ca=False), key)
    return paths
