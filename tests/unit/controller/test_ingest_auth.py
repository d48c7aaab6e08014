"""Who may push telemetry: the decisions of the ingestion authorizer and record validation.

The authorizer is one function over two API calls; the stand-in below scripts what the API
server's TokenReview and SubjectAccessReview answer (the real ones are exercised against the
local API server in tests/integration/test_ingest.py).
"""

import pytest

from scalable.controller.ingest import _Authorizer, _validate


class ScriptedReviews:
    def __init__(self, authenticated=True, allowed=True, username="system:serviceaccount:team-a:client"):
        self.authenticated, self.allowed, self.username = authenticated, allowed, username
        self.access_calls = []
        self.token_calls = 0

    async def token_review(self, token, audiences=None):
        self.token_calls += 1
        self.audiences = audiences
        if not self.authenticated:
            return {"authenticated": False, "error": "token expired"}
        return {"authenticated": True, "user": {"username": self.username, "groups": ["system:serviceaccounts"]}}

    async def access_review(self, user, namespace, verb, group, resource, name):
        self.access_calls.append((user["username"], namespace, verb, group, resource, name))
        return {"allowed": self.allowed, "reason": "" if self.allowed else "RBAC: no rule"}


async def test_invalid_token_is_401():
    status, message = await _Authorizer(ScriptedReviews(authenticated=False)).check("t", "team-a", "wf")
    assert status == 401 and "expired" in message


async def test_not_allowed_is_403_and_names_who_and_what():
    reviews = ScriptedReviews(allowed=False, username="system:serviceaccount:team-b:client")
    status, message = await _Authorizer(reviews).check("t", "team-a", "wf")
    assert status == 403
    assert "team-b:client" in message and "scalableworkflows/wf" in message and "team-a" in message


async def test_the_question_asked_is_update_of_that_workflow():
    reviews = ScriptedReviews()
    status, _ = await _Authorizer(reviews).check("t", "team-a", "wf")
    assert status == 200
    assert reviews.access_calls == [("system:serviceaccount:team-a:client", "team-a", "update", "scalable.dev", "scalableworkflows", "wf")]


async def test_the_configured_audiences_are_asked_for():
    reviews = ScriptedReviews()
    await _Authorizer(reviews, audiences=["scalable"]).check("t", "team-a", "wf")
    assert reviews.audiences == ["scalable"]


async def test_decisions_are_cached_per_token_and_workflow():
    reviews = ScriptedReviews()
    auth = _Authorizer(reviews)
    await auth.check("t", "team-a", "wf")
    await auth.check("t", "team-a", "wf")
    assert reviews.token_calls == 1
    await auth.check("t", "team-a", "other")
    assert reviews.token_calls == 2  # another workflow is another question


def _task(**extra):
    return {"kind": "task", "task": "simulate", "submitted_at": 1.0, "duration_s": 2.0, "peak_memory_bytes": 1024, **extra}


def test_valid_records_pass_and_get_the_run_id():
    valid, refused = _validate("r1", [_task(), {"kind": "worker", "time": 1.0, "worker": "w"}])
    assert not refused and [r.run_id for r in valid] == ["r1", "r1"]


@pytest.mark.parametrize("record, reason", [
    (_task(duration_s=-1), "duration_s"),
    (_task(schema_version=7), "schema_version"),
    (_task(run_id="other"), "differs"),
    ({"kind": "run", "run_id": "r1"}, "cannot be pushed"),
    ("not an object", "JSON object"),
    (_task(unknown_field=1), "unknown_field"),
])
def test_bad_records_are_refused_with_a_reason(record, reason):
    valid, refused = _validate("r1", [_task(), record])
    assert len(valid) == 1 and len(refused) == 1
    assert refused[0]["index"] == 1 and reason in refused[0]["reason"]
