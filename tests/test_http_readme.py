"""The README's HTTP API examples run as written against the real stack's router: its
curl commands and its Python program, taken from the README itself, with only the
address changed from `tandem up`'s port 8000 to the test router's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## OpenAI-compatible HTTP API"
DOCUMENTED_URL = "http://127.0.0.1:8000"
MARK = "@@ next command @@"


def code_blocks(language: str) -> list[str]:
    """The section's fenced blocks in ``language``."""
    text = README.read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_readme_curl_examples_run_as_written(real_stack):
    """The first bash block as one script; a DEBUG trap marks where each command's output
    starts, so the commands run exactly as written."""
    script = code_blocks("bash")[0].replace(DOCUMENTED_URL, real_stack["router"].http_url)
    done = subprocess.run(["bash", "-ec", f"trap 'printf \"\\n{MARK}\\n\"' DEBUG\n{script}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outputs = [part.strip() for part in done.stdout.split(MARK)[1:]]
    assert len(outputs) == 4
    for output in outputs:
        if output.startswith("data: "):
            events = [line[6:] for line in output.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["total_tokens"]
            pieces = [json.loads(e) for e in events[:-3]]
            assert pieces and all(p["tandem"]["tier"] in ("edge", "cloud") for p in pieces)
        else:
            answer = json.loads(output)
            assert "error" not in answer and (answer.get("choices") or answer.get("data"))


def test_readme_python_example_runs_as_written(real_stack):
    (program,) = code_blocks("python")
    done = subprocess.run([sys.executable, "-c",
                           program.replace(DOCUMENTED_URL, real_stack["router"].http_url)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and any(line.endswith(("[edge]", "[cloud]")) for line in lines)
