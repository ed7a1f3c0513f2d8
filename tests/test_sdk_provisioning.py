"""Model provisioning for the SDK's on-device mode, on the real packaged GGUF."""

from __future__ import annotations

import hashlib

import pytest

from tandem.edge.sdk import provisioning
from tandem.edge.sdk.provisioning import (ChecksumMismatch, InsufficientMemory, memory_report,
                                      provision, sha256_of)
from tandem.shared.models import DEFAULT_MODEL, ModelNotFound, resolve_model


@pytest.fixture(scope="module")
def packaged_sha256() -> str:
    return hashlib.sha256(resolve_model(DEFAULT_MODEL).path.read_bytes()).hexdigest()


def test_locates_the_packaged_model_and_verifies_its_checksum(packaged_sha256):
    events: list[tuple[str, int, int]] = []
    source = provision(DEFAULT_MODEL, sha256=packaged_sha256,
                       progress=lambda what, done, total: events.append((what, done, total)))
    assert source.is_gguf and source.path == resolve_model(DEFAULT_MODEL).path
    size = source.path.stat().st_size
    assert events[-1][1:] == (size, size)
    assert [done for _, done, _ in events] == sorted(done for _, done, _ in events)


def test_wrong_checksum_is_refused_before_loading():
    with pytest.raises(ChecksumMismatch, match="sha256"):
        provision(DEFAULT_MODEL, sha256="0" * 64)


def test_copy_into_an_app_folder_with_progress(tmp_path, packaged_sha256):
    events: list[tuple[str, int, int]] = []
    source = provision(DEFAULT_MODEL, copy_to=tmp_path / "models", sha256=packaged_sha256,
                       progress=lambda what, done, total: events.append((what, done, total)))
    assert source.path.parent == tmp_path / "models"
    assert sha256_of(source.path) == packaged_sha256
    assert any(what.startswith("copying") for what, _, _ in events)
    assert provision(str(source.path)).path == source.path  # a path works as well


def test_memory_needed_vs_available_is_checked(monkeypatch):
    report = memory_report(resolve_model(DEFAULT_MODEL))
    assert report.needed_bytes > resolve_model(DEFAULT_MODEL).path.stat().st_size
    monkeypatch.setattr(provisioning, "available_memory", lambda: 1 << 20)
    with pytest.raises(InsufficientMemory, match="MiB"):
        provision(DEFAULT_MODEL)


def test_a_missing_model_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotFound):
        provision(str(tmp_path / "nothing.gguf"))
