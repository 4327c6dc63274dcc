"""Schemathesis over the published OpenAPI document: valid and invalid requests to every
operation, with and without a token, never get a 5xx, and every answer has a documented
status code and content type."""

from __future__ import annotations

import asyncio

import aiohttp
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

EXAMPLES_PER_OPERATION = 25


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def fuzz(document: dict, base_url: str, token: str) -> list[str]:
    """Run every operation's cases (blocking; call from a worker thread); the failures."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    auth = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, headers=auth),
            operation.as_strategy(GenerationMode.NEGATIVE, headers=auth),
            operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            response = case.call(base_url=base_url, timeout=15)
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # schemathesis raises a FailureGroup
                failures.append(f"{case.method} {case.formatted_path} body={case.body!r} -> "
                                f"{response.status_code} {response.text[:300]}: "
                                f"{str(exc)[:300]}")

        run()
    return failures


async def test_openapi_fuzz_finds_no_5xx(pg_cluster):
    async with running_runtime(runtime_config(pg_cluster)) as rt, \
            aiohttp.ClientSession() as session:
        api = Api(rt.api_url, session)
        token = await api.login("admin", ADMIN_PASSWORD)
        status, document, _ = await api.request("GET", "/api/v1/openapi.json")
        assert status == 200
        # The runtime keeps serving in this event loop while the fuzzer blocks a thread.
        failures = await asyncio.to_thread(fuzz, document, rt.api_url, token)
        assert not failures, "\n".join(failures[:20])
        status, health, _ = await api.request("GET", "/health")
        assert status == 200 and health["status"] == "ok"
