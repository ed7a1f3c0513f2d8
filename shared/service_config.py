"""Settings every Tandem gRPC service has (the component configs extend this)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.shared.config import option
from tandem.shared.limits import RequestLimits
from tandem.shared.models import DEFAULT_MODEL


@dataclass
class ServiceConfig:
    host: str = option("127.0.0.1", "Interface to listen on.")
    port: int = option(0, "gRPC port; 0 picks a free one (see --ready-file).")
    metrics_port: int = option(0, "Prometheus /metrics port; 0 picks a free one, -1 disables.")
    ready_file: str | None = option(
        None, "Write {address, metrics_port} as JSON here once the service is SERVING.")
    log_level: str = option("info", "Log level: debug, info, warning, error.")
    drain_seconds: float = option(
        30.0, "On SIGTERM: health turns NOT_SERVING and new calls are refused (UNAVAILABLE) at "
              "once; calls in flight finish for up to this long, then are cut.")
    tls_cert: str | None = option(
        None, "PEM certificate this service serves TLS with (the router also presents it "
              "to the tiers as its client certificate); needs tls_key.")
    tls_key: str | None = option(None, "PEM private key of tls_cert.")
    tls_ca: str | None = option(
        None, "PEM CA certificate. A tier with it refuses clients without a certificate "
              "signed by it (mTLS); the router checks the tiers' certificates against it.")
    internal_token: str | None = option(
        None, "Shared secret between the router and the tiers: a tier with it refuses calls "
              "that do not carry it (x-tandem-internal-token metadata); the router sends it.")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.drain_seconds < 0:
            raise ValueError("drain_seconds must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")


@dataclass
class TierConfig(ServiceConfig, RequestLimits):
    """Settings shared by the model tiers (edge and cloud)."""

    model: str = option(DEFAULT_MODEL, "Packaged model alias, .gguf path or HF model folder.")
    threads: int = option(0, "Compute threads; 0 uses every core.")
    openmp_spin_count: int = option(
        50_000, "Iterations the model's OpenMP threads spin before sleeping between parallel "
                "regions (0: sleep at once; shared/openmp.py says why).")
    compute_nice: int = option(
        10, "How much lower (nice) the model's threads run than the service's event loop, "
            "which admits, refuses and streams (0: the same; shared/priority.py says why).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_request_limits()
        if self.openmp_spin_count < 0:
            raise ValueError("openmp_spin_count must be >= 0")
        if not 0 <= self.compute_nice <= 19:
            raise ValueError("compute_nice must be in [0, 19]")
