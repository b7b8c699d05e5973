"""The test API keys, one per role, and the header that carries them."""

from __future__ import annotations

from gateway.auth import key_from_secret

# One key per role, a second scorer (another caller) and an auditor with the pii scope.
KEYS = {
    "scorer": "sk-test-scorer-5e1c0d9a",
    "scorer2": "sk-test-scorer-two-77b2",
    "feature_writer": "sk-test-feature-writer-4b07",
    "auditor": "sk-test-auditor-0a4471",
    "auditor_pii": "sk-test-auditor-pii-93c1",
    "operator": "sk-test-operator-c2de55",
    "admin": "sk-test-admin-f00dfeed",
}


API_KEYS = (
    key_from_secret(KEYS["scorer"], ["scorer"]),
    key_from_secret(KEYS["scorer2"], ["scorer"]),
    key_from_secret(KEYS["feature_writer"], ["feature_writer"]),
    key_from_secret(KEYS["auditor"], ["auditor"]),
    key_from_secret(KEYS["auditor_pii"], ["auditor"], ["pii"]),
    key_from_secret(KEYS["operator"], ["operator"]),
    key_from_secret(KEYS["admin"], ["admin"]),
)


def bearer(who: str) -> dict[str, str]:
    """The Authorization header of one of the test keys."""
    return {"Authorization": f"Bearer {KEYS[who]}"}
