"""No 5xx on bad input (issue 12, item 3): hypothesis sends hostile requests to a real `kiln serve`.

Every SageMaker operation Kiln serves and every S3 operation, signed (so they reach the handlers) and not.
The property, judged by fuzz_wire.problems: an answer always comes back, it is never a 5xx (S3's deliberate
501 NotImplemented aside), and every 4xx carries its protocol's error code and message, naming the member
when a SageMaker member had the wrong type. The strategies are shared with `make fuzz` (bench/fuzz.py, 10,000+
requests); here the run is bounded and derandomized, so `make test` is quick and reproducible.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.fuzz_strategies import (
    MAX_JSON_BODY, Case, forged_cases, s3_cases, sagemaker_cases, token_cases,
)
from tests.api.fuzz_wire import Wire, prepare, problems, send

# derandomize: the same examples on every run (no seed to pass around); database=None: no example database
# in the repository (hypothesis still keeps caches in .hypothesis/, which git ignores by its own .gitignore);
# deadline=None: a request's time depends on the machine, not on the code under test.
settings.register_profile(
    "kiln-fuzz", derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)
FUZZ = settings.get_profile("kiln-fuzz")


@pytest.fixture(scope="module")
def wire(s3_server) -> Wire:
    return prepare(s3_server.server, s3_server.first, s3_server.second)


def _holds(wire: Wire, case: Case) -> None:
    found = problems(case, send(wire, case))
    assert not found, f"{case.summary()}\n-> {found}"


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_sagemaker_requests_get_an_answer_and_no_5xx(wire, data):
    _holds(wire, data.draw(sagemaker_cases(wire.target)))


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_forged_next_tokens_get_a_4xx_naming_next_token(wire, data):
    case = data.draw(token_cases(wire.target))
    outcome = send(wire, case)
    assert not problems(case, outcome), f"{case.summary()}\n-> {problems(case, outcome)}"
    # A forged token that happens to be well formed pages like a real one; a body past the size limit is
    # refused as "body" before any member is read.
    if outcome.status != 200 and len(case.body) <= MAX_JSON_BODY:
        assert b"NextToken" in outcome.body, (case.summary(), outcome.body[:300])


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_forged_signatures_get_an_answer_and_no_5xx(wire, data):
    _holds(wire, data.draw(forged_cases(wire.target)))


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_s3_requests_get_an_answer_and_no_5xx(wire, data):
    _holds(wire, data.draw(s3_cases(wire.target)))
