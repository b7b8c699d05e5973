"""locust scenarios: scorers, auditors and operators against a running scoregate.

Three kinds of users, in the proportions a fraud-scoring deployment sees:

- **scorers** (decision services, most of the traffic): ``POST /score`` for a random
  customer and merchant with a lognormal card amount; about 1 in 100 is a retry of
  the previous request with the same ``request_id``, which must return the same
  decision;
- **auditors**: search ``GET /decisions`` (by subject, by model, rolled back only) and
  read ``GET /decisions/{id}`` of decisions the scorers made, with an ``X-Purpose``;
- **operators**: replay some decisions and roll a small share back.

With the default weights and waits, 50 users send about 95% scores (retries
included), 3-4% audit reads and searches and under 1% operator calls (about one
rollback per 800 decisions).

Keys come from the environment, as ``scoregate dev`` prints them:
``SCOREGATE_SCORER_KEY``, ``SCOREGATE_AUDITOR_KEY``, ``SCOREGATE_OPERATOR_KEY`` (or one
``SCOREGATE_DEV_KEYS=scorer=...,auditor=...,operator=...``); an admin key stands in
for a missing one. ``SCOREGATE_CUSTOMERS`` (200, what ``scoregate dev`` seeds) sets
the customer range. With ``scoregate dev`` running:

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --host http://127.0.0.1:8000 --html loadtests/results/locust.html
"""

from __future__ import annotations

import os
import random
import uuid
from collections import deque
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from traffic import score_body

CUSTOMERS = int(os.environ.get("SCOREGATE_CUSTOMERS", "200"))
PURPOSES = ("fraud review", "customer complaint", "model monitoring", "regulator request")
ROLLBACK_REASONS = ("customer disputed", "false positive confirmed", "duplicate transaction")

recent: deque[tuple[str, str]] = deque(maxlen=5000)
"""(decision id, customer id) of recent decisions, for auditors and operators."""


def _keys() -> dict[str, str]:
    keys = {}
    for item in filter(None, os.environ.get("SCOREGATE_DEV_KEYS", "").split(",")):
        role, _, secret = item.strip().partition("=")
        keys[role] = secret
    for role in ("scorer", "auditor", "operator", "admin"):
        if secret := os.environ.get(f"SCOREGATE_{role.upper()}_KEY"):
            keys[role] = secret
    return keys


KEYS = _keys()


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS.get(role) or KEYS.get('admin', '')}"}


@events.test_start.add_listener
def _check_keys(environment: Environment, **_: Any) -> None:
    missing = [r for r in ("scorer", "auditor", "operator") if r not in KEYS]
    if missing and "admin" not in KEYS:
        raise SystemExit(
            "set SCOREGATE_SCORER_KEY, SCOREGATE_AUDITOR_KEY and SCOREGATE_OPERATOR_KEY"
            " (as `scoregate dev` prints them); missing: " + ", ".join(missing)
        )


class Scorer(FastHttpUser):
    """A decision service scoring card transactions."""

    weight = 38
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        """Each scorer draws from its own random stream."""
        self.rng = random.Random()
        self.headers = _auth("scorer")
        self.last: tuple[dict[str, Any], str] | None = None

    @task(99)
    def score(self) -> None:
        """Score a new transaction."""
        body = score_body(self.rng, CUSTOMERS, f"lc-{uuid.uuid4().hex}")
        with self.client.post(
            "/score", json=body, headers=self.headers, name="/score", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            decision_id = response.json()["decision_id"]
            self.last = (body, decision_id)
            recent.append((decision_id, body["entities"]["customer_id"]))

    @task(1)
    def retry(self) -> None:
        """Send the previous request again: the same decision must come back."""
        if self.last is None:
            return
        body, decision_id = self.last
        with self.client.post(
            "/score", json=body, headers=self.headers, name="/score (retry)", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif response.json()["decision_id"] != decision_id:
                response.failure("a retry with the same request_id got a new decision")


class Auditor(FastHttpUser):
    """Someone reviewing decisions: searches and reads whole decision contexts."""

    weight = 8
    wait_time = between(1, 3)

    def on_start(self) -> None:
        """Auditors read with their own key."""
        self.headers = _auth("auditor")

    def _purpose(self) -> dict[str, str]:
        return {**self.headers, "X-Purpose": random.choice(PURPOSES)}

    @task(4)
    def read(self) -> None:
        """Read one recent decision's full context, saying why."""
        if not recent:
            return self.search_by_subject()
        decision_id, _ = random.choice(recent)
        self.client.get(
            f"/decisions/{decision_id}", headers=self._purpose(), name="/decisions/[id]"
        )
        return None

    @task(3)
    def search_by_subject(self) -> None:
        """A customer's decisions, newest first."""
        customer = random.choice(recent)[1] if recent else f"c-{random.randint(1, CUSTOMERS)}"
        self.client.get(
            f"/decisions?subject={customer}&limit=20",
            headers=self.headers,
            name="/decisions?subject",
        )

    @task(1)
    def search_by_model(self) -> None:
        """The model's latest decisions, a page."""
        self.client.get(
            "/decisions?model=fraud&limit=50", headers=self.headers, name="/decisions?model"
        )

    @task(1)
    def search_rolled_back(self) -> None:
        """What was rolled back lately."""
        self.client.get(
            "/decisions?status=rolled_back&limit=50",
            headers=self.headers,
            name="/decisions?status=rolled_back",
        )


class Operator(FastHttpUser):
    """An operator replaying decisions to check them and rolling a few back."""

    weight = 4
    wait_time = between(3, 8)

    def on_start(self) -> None:
        """Operators act with their own key."""
        self.headers = _auth("operator")

    @task(3)
    def replay(self) -> None:
        """Score a recorded decision's feature vector again."""
        if not recent:
            return
        decision_id, _ = random.choice(recent)
        self.client.post(
            f"/decisions/{decision_id}/replay",
            json={},
            headers={**self.headers, "X-Purpose": "model monitoring"},
            name="/decisions/[id]/replay",
        )

    @task(1)
    def rollback(self) -> None:
        """Roll a recent decision back (a second rollback answers with the first)."""
        if not recent:
            return
        decision_id, _ = random.choice(recent)
        self.client.post(
            f"/decisions/{decision_id}/rollback",
            json={"reason": random.choice(ROLLBACK_REASONS)},
            headers=self.headers,
            name="/decisions/[id]/rollback",
        )
