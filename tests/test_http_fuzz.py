"""A schema-driven fuzzer against the HTTP API of a real router: schemathesis reads the
app's own OpenAPI document and sends hypothesis-generated requests, valid and invalid,
to every operation. None may be answered 5xx or hang, and afterwards the stack answers
a normal request as before."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tandem.shared.process import ServiceProcess
from tests.conftest import start_services

pytestmark = pytest.mark.real_model

# Generated requests per operation and mode; the GETs without parameters run out of
# distinct requests after a handful, the completions endpoints never do.
EXAMPLES = {"POST /v1/chat/completions": 160, "POST /v1/completions": 120,
            "GET /v1/models/{model}": 30}
OTHER_EXAMPLES = 10
CALL_TIMEOUT_S = 120  # a hang fails the test instead of blocking it
MIN_REQUESTS = 500


@pytest.fixture(scope="module")
def fuzz_router(real_stack, tmp_path_factory) -> Iterator[ServiceProcess]:
    """A router whose answers are at most 4 tokens, so that the valid requests among the
    generated ones cost little model time."""
    router = start_services(tmp_path_factory.mktemp("fuzz"), [("router", [
        "--cloud-address", real_stack["cloud"].address,
        "--edge-address", real_stack["edge"].address,
        "--max-tokens-cap", "4", "--default-max-tokens", "4"])])[0]
    yield router
    router.stop()


def _fuzz(operation, mode, url: str, session: requests.Session, sent: Counter,
          server_errors: list[str]) -> None:
    @settings(max_examples=EXAMPLES.get(operation.label, OTHER_EXAMPLES), deadline=None,
              database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=url, session=session, timeout=CALL_TIMEOUT_S)
        sent[operation.label, response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(f"{operation.label} {response.status_code}: "
                                 f"{case.body!r:.300} -> {response.text:.300}")

    send()


def test_generated_requests_get_no_5xx_and_the_stack_still_answers(fuzz_router):
    url = fuzz_router.http_url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent: Counter = Counter()
    server_errors: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in schemathesis.GenerationMode:
                try:
                    _fuzz(operation, mode, url, session, sent, server_errors)
                except Unsatisfiable:
                    # Nothing to make invalid: an operation without parameters or body.
                    assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    assert not server_errors, "\n".join(server_errors[:10])
    assert sum(sent.values()) >= MIN_REQUESTS, sent
    # Some generated requests were valid and answered by the model, not only refused.
    assert sent["POST /v1/chat/completions", 200] + sent["POST /v1/completions", 200] > 0, sent
    assert fuzz_router.proc.poll() is None
    client = openai.OpenAI(base_url=url + "/v1", api_key="open", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model="tandem-cloud", messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 4
    assert requests.get(f"{url}/ready", timeout=30).status_code == 200
