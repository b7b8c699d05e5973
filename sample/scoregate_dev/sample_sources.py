"""Sample upstream source APIs with switchable faults.

Three source systems are served by one Litestar app, each under its own path prefix, so
the gateway can be run and tested locally against something that behaves like real
upstreams: plausible deterministic values, lognormal latency and faults that tests switch
at runtime.

Run it with ``python -m scoregate_dev.sample_sources --port 8101``; the sources' base URLs
are then ``http://127.0.0.1:8101/profile``, ``.../txn`` and ``.../merchant``.
"""

import argparse
import asyncio
import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, delete, get, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.types import Receive, Scope

SOURCE_PREFIXES: dict[str, str] = {
    "customer_profile": "/profile",
    "txn_stats": "/txn",
    "merchant_risk": "/merchant",
}
"""Path prefix of each source; a source's base URL is ``http://HOST:PORT<prefix>``."""

# Median upstream latency per source in seconds; the stats service aggregates on read,
# so it is the slowest of the three.
_MEDIAN_LATENCY_S: dict[str, float] = {
    "customer_profile": 0.008,
    "txn_stats": 0.012,
    "merchant_risk": 0.008,
}
_LATENCY_SIGMA = 0.5
# Bounds the lognormal tail so one unlucky draw cannot look like a hang.
_MAX_LATENCY_FACTOR = 25.0

_UNKNOWN_PREFIX = "unknown-"
_RISKY_CUSTOMER_SHARE = 0.08
_RISKY_MERCHANT_SHARE = 0.10

FaultMode = Literal["ok", "error", "hang", "latency", "flap"]


class FaultSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fault to inject into a service's data calls.

    Attributes:
        mode: ``ok`` answers normally; ``error`` answers ``status``; ``hang`` never
            answers; ``latency`` waits ``latency_ms`` more before answering normally;
            ``flap`` fails every ``flap_every``-th call with ``status``.
        latency_ms: Extra delay for ``latency`` mode.
        status: HTTP status of injected failures.
        flap_every: Period of ``flap`` mode; call n (1-based) fails when
            ``n % flap_every == 0``.
    """

    mode: FaultMode
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503
    flap_every: Annotated[int, msgspec.Meta(ge=1)] = 2


NO_FAULT = FaultSpec(mode="ok")
"""The fault every service starts with."""


class FaultAction(NamedTuple):
    """What a single data call must do under the current fault.

    Attributes:
        fail_status: Status to fail with, or None to answer normally.
        hang: Whether to never answer.
        extra_delay_s: Delay to add before answering.
    """

    fail_status: int | None
    hang: bool
    extra_delay_s: float


class FaultSwitch:
    """The current fault of one service and the call counter that ``flap`` needs."""

    def __init__(self) -> None:
        """Start with no fault."""
        self._spec = NO_FAULT
        self._calls = 0

    @property
    def spec(self) -> FaultSpec:
        """The fault in force."""
        return self._spec

    def set(self, spec: FaultSpec) -> None:
        """Switch to a new fault.

        Args:
            spec: The fault to apply from the next call on.
        """
        self._spec = spec
        # The flap pattern counts from the moment it is set, so tests can predict it.
        self._calls = 0

    def next_action(self) -> FaultAction:
        """Count one call and decide how it must behave.

        Returns:
            The action for this call.
        """
        self._calls += 1
        spec = self._spec
        if spec.mode == "error":
            return FaultAction(spec.status, False, 0.0)
        if spec.mode == "hang":
            return FaultAction(None, True, 0.0)
        if spec.mode == "latency":
            return FaultAction(None, False, spec.latency_ms / 1000.0)
        if spec.mode == "flap" and self._calls % spec.flap_every == 0:
            return FaultAction(spec.status, False, 0.0)
        return FaultAction(None, False, 0.0)


async def hold_until_disconnect(receive: Receive) -> None:
    """Never answer: wait until the client gives up and goes away.

    Waiting on the connection rather than on a bare never-set event lets the server
    release the request once the client has timed out, so hung calls do not pile up.

    Args:
        receive: The request's ASGI receive callable.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ErrorBody(msgspec.Struct, frozen=True):
    """Error answer shared by all endpoints.

    Attributes:
        error: Human-readable reason.
    """

    error: str


class CustomerProfile(msgspec.Struct, frozen=True):
    """Answer of the ``customer_profile`` source.

    Attributes:
        customer_id: The customer asked for.
        account_age_days: Days since the account was opened.
        kyc_level: Know-your-customer level, 1 (weakest) to 3.
        country_risk: Risk score of the customer's country, 0 to 1.
        event_time: When the upstream record was last updated (RFC 3339, UTC).
        record_id: Identifier of the upstream record version.
    """

    customer_id: str
    account_age_days: int
    kyc_level: int
    country_risk: float
    event_time: str
    record_id: str


class TxnStats(msgspec.Struct, frozen=True):
    """Answer of the ``txn_stats`` source.

    Attributes:
        customer_id: The customer asked for.
        txn_count_30m: Transactions in the last 30 minutes.
        txn_amount_sum_24h: Sum of transaction amounts in the last 24 hours.
        distinct_merchants_7d: Distinct merchants paid in the last 7 days.
        event_time: When the aggregate was computed (RFC 3339, UTC).
        record_id: Identifier of the upstream record version.
    """

    customer_id: str
    txn_count_30m: int
    txn_amount_sum_24h: float
    distinct_merchants_7d: int
    event_time: str
    record_id: str


class MerchantRisk(msgspec.Struct, frozen=True):
    """Answer of the ``merchant_risk`` source.

    Attributes:
        merchant_id: The merchant asked for.
        chargeback_rate_90d: Share of transactions charged back in 90 days, 0 to 0.2.
        category_risk: Risk score of the merchant category, 0 to 1.
        event_time: When the upstream record was last updated (RFC 3339, UTC).
        record_id: Identifier of the upstream record version.
    """

    merchant_id: str
    chargeback_rate_90d: float
    category_risk: float
    event_time: str
    record_id: str


class SourceStats(msgspec.Struct, frozen=True):
    """Data calls received since start or the last reset.

    Attributes:
        calls: Calls per source name.
        paths: Calls per request path.
        targets: Requests per request target exactly as received (raw path, and
            ``?query`` if any), including those no route matched; the control
            routes under ``/_`` are left out.
    """

    calls: dict[str, int]
    paths: dict[str, int]
    targets: dict[str, int]


def _draws(kind: str, entity_id: str) -> random.Random:
    """Return a generator seeded only by the entity, stable across processes and runs."""
    digest = hashlib.blake2b(f"{kind}:{entity_id}".encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))  # noqa: S311


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _customer_is_risky(customer_id: str) -> bool:
    # Shared by both customer sources so one customer looks risky in all of them.
    return _draws("risk", customer_id).random() < _RISKY_CUSTOMER_SHARE


def _record_stamp(source: str, entity_id: str, now: datetime) -> tuple[str, str]:
    """Return ``(event_time, record_id)`` for a record updated a few seconds ago."""
    lag_s = _draws(f"lag:{source}", entity_id).uniform(0.0, 5.0)
    updated = now - timedelta(seconds=lag_s)
    event_time = updated.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    version = int(updated.timestamp() * 1000)
    return event_time, f"{source}:{entity_id}:{version}"


def profile_record(customer_id: str, now: datetime) -> CustomerProfile:
    """Build the deterministic profile of a customer.

    Args:
        customer_id: The customer.
        now: Current time, used only for ``event_time`` and ``record_id``.

    Returns:
        The profile.
    """
    rng = _draws("customer_profile", customer_id)
    if _customer_is_risky(customer_id):
        age = rng.lognormvariate(math.log(20.0), 1.0)
        kyc = rng.choices((1, 2, 3), weights=(0.6, 0.3, 0.1))[0]
        country = rng.betavariate(5.0, 3.0)
    else:
        age = rng.lognormvariate(math.log(700.0), 0.8)
        kyc = rng.choices((1, 2, 3), weights=(0.1, 0.4, 0.5))[0]
        country = rng.betavariate(2.0, 8.0)
    event_time, record_id = _record_stamp("customer_profile", customer_id, now)
    return CustomerProfile(
        customer_id=customer_id,
        account_age_days=int(_clamp(age, 1.0, 5000.0)),
        kyc_level=kyc,
        country_risk=round(country, 4),
        event_time=event_time,
        record_id=record_id,
    )


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: exact and cheap for the small means used here.
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def txn_stats_record(customer_id: str, now: datetime) -> TxnStats:
    """Build the deterministic transaction aggregates of a customer.

    Args:
        customer_id: The customer.
        now: Current time, used only for ``event_time`` and ``record_id``.

    Returns:
        The aggregates.
    """
    rng = _draws("txn_stats", customer_id)
    if _customer_is_risky(customer_id):
        count = _poisson(rng, 5.0)
        amount_sum = rng.lognormvariate(math.log(900.0), 0.8)
        merchants = _poisson(rng, 14.0)
    else:
        count = _poisson(rng, 0.8)
        amount_sum = rng.lognormvariate(math.log(120.0), 0.9)
        merchants = _poisson(rng, 6.0)
    event_time, record_id = _record_stamp("txn_stats", customer_id, now)
    return TxnStats(
        customer_id=customer_id,
        txn_count_30m=count,
        txn_amount_sum_24h=round(amount_sum, 2),
        distinct_merchants_7d=merchants,
        event_time=event_time,
        record_id=record_id,
    )


def merchant_risk_record(merchant_id: str, now: datetime) -> MerchantRisk:
    """Build the deterministic risk record of a merchant.

    Args:
        merchant_id: The merchant.
        now: Current time, used only for ``event_time`` and ``record_id``.

    Returns:
        The risk record.
    """
    rng = _draws("merchant_risk", merchant_id)
    if rng.random() < _RISKY_MERCHANT_SHARE:
        chargeback = rng.betavariate(2.0, 40.0)
        category = rng.betavariate(5.0, 3.0)
    else:
        chargeback = rng.betavariate(1.2, 300.0)
        category = rng.betavariate(2.0, 6.0)
    event_time, record_id = _record_stamp("merchant_risk", merchant_id, now)
    return MerchantRisk(
        merchant_id=merchant_id,
        chargeback_rate_90d=round(_clamp(chargeback, 0.0, 0.2), 5),
        category_risk=round(category, 4),
        event_time=event_time,
        record_id=record_id,
    )


def error_response(status: int, message: str) -> Response[ErrorBody]:
    """Build an ``{"error": message}`` answer.

    Args:
        status: HTTP status code.
        message: Reason given to the client.

    Returns:
        The response.
    """
    return Response(ErrorBody(error=message), status_code=status)


def http_exception_as_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    """Render framework errors (unknown route, bad method, bad body) in the shared error shape.

    Args:
        _: The failed request.
        exc: The error raised by the framework or a handler.

    Returns:
        The ``{"error": ...}`` response with the exception's status.
    """
    return error_response(exc.status_code, exc.detail)


def request_target(scope: Scope) -> str:
    """The request target as it came over the wire: the raw path and the query, if any.

    Args:
        scope: The request's ASGI scope.

    Returns:
        The target, e.g. ``/txn/customers/a%2Fb/txn-stats``.
    """
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    target = raw.decode("latin-1")
    return f"{target}?{query.decode('latin-1')}" if query else target


class _SourceRuntime:
    """Mutable state of one app: faults, counters and the latency generator."""

    def __init__(self, latency_scale: float, seed: int) -> None:
        self.latency_scale = latency_scale
        # Simulated latency, not security: a seeded generator keeps runs replayable.
        self.rng = random.Random(seed)  # noqa: S311
        self.faults = {name: FaultSwitch() for name in SOURCE_PREFIXES}
        self.calls: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.targets: Counter[str] = Counter()

    def count_target(self, scope: Scope) -> None:
        """Count one request's target unless it is for a control route."""
        target = request_target(scope)
        if not target.startswith("/_"):
            self.targets[target] += 1

    def http_error(
        self, request: Request[Any, Any, Any], exc: HTTPException
    ) -> Response[ErrorBody]:
        """Answer a framework error; a request no route took is counted all the same."""
        if exc.status_code in (404, 405):
            self.count_target(request.scope)
        return http_exception_as_error(request, exc)

    def base_latency(self, source: str) -> float:
        if self.latency_scale <= 0:
            return 0.0
        median = _MEDIAN_LATENCY_S[source]
        drawn = self.rng.lognormvariate(math.log(median), _LATENCY_SIGMA)
        return min(drawn, median * _MAX_LATENCY_FACTOR) * self.latency_scale

    async def answer(
        self,
        source: str,
        request: Request[Any, Any, Any],
        entity_id: str,
        build: Callable[[str, datetime], msgspec.Struct],
    ) -> Response[Any]:
        """Count the call, wait, apply the fault and answer with the built record."""
        self.calls[source] += 1
        self.paths[request.scope["path"]] += 1
        self.count_target(request.scope)
        action = self.faults[source].next_action()
        delay = self.base_latency(source) + action.extra_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if action.hang:
            await hold_until_disconnect(request.receive)
            # Only reached once the client has left, so nobody reads this answer.
            return error_response(504, "injected")
        if action.fail_status is not None:
            return error_response(action.fail_status, "injected")
        if entity_id.startswith(_UNKNOWN_PREFIX):
            return error_response(404, "not found")
        return Response(build(entity_id, datetime.now(UTC)))


def create_sources_app(latency_scale: float = 1.0, seed: int = 0) -> Litestar:
    """Build the app serving the three sample sources and their fault switches.

    Args:
        latency_scale: Multiplier of the simulated upstream latency; 0 disables it.
        seed: Seed of the latency draws, so a run's latencies can be replayed.

    Returns:
        The Litestar app.
    """
    state = _SourceRuntime(latency_scale, seed)

    @get("/profile/customers/{customer_id:str}/profile")
    async def customer_profile(
        request: Request[Any, Any, Any], customer_id: FromPath[str]
    ) -> Response[Any]:
        return await state.answer("customer_profile", request, customer_id, profile_record)

    @get("/txn/customers/{customer_id:str}/txn-stats")
    async def txn_stats(
        request: Request[Any, Any, Any], customer_id: FromPath[str]
    ) -> Response[Any]:
        return await state.answer("txn_stats", request, customer_id, txn_stats_record)

    @get("/merchant/merchants/{merchant_id:str}/risk")
    async def merchant_risk(
        request: Request[Any, Any, Any], merchant_id: FromPath[str]
    ) -> Response[Any]:
        return await state.answer("merchant_risk", request, merchant_id, merchant_risk_record)

    @put("/_faults/{source:str}", status_code=200)
    async def set_fault(
        request: Request[Any, Any, Any], source: FromPath[str]
    ) -> Response[FaultSpec] | Response[ErrorBody]:
        if source not in state.faults:
            return error_response(404, f"unknown source {source!r}")
        try:
            spec = msgspec.json.decode(await request.body(), type=FaultSpec)
        except msgspec.DecodeError as exc:
            return error_response(400, f"bad fault: {exc}")
        state.faults[source].set(spec)
        return Response(spec)

    @delete("/_faults")
    async def reset_faults() -> None:
        for switch in state.faults.values():
            switch.set(NO_FAULT)

    @get("/_stats")
    async def read_stats() -> SourceStats:
        calls = {name: state.calls[name] for name in SOURCE_PREFIXES}
        return SourceStats(calls=calls, paths=dict(state.paths), targets=dict(state.targets))

    @delete("/_stats")
    async def reset_stats() -> None:
        state.calls.clear()
        state.paths.clear()
        state.targets.clear()

    return Litestar(
        route_handlers=[
            customer_profile,
            txn_stats,
            merchant_risk,
            set_fault,
            reset_faults,
            read_stats,
            reset_stats,
        ],
        exception_handlers={HTTPException: state.http_error},
        openapi_config=None,
    )


def main(argv: list[str] | None = None) -> None:
    """Serve the sample sources until interrupted.

    Args:
        argv: Command-line arguments without the program name; defaults to ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m scoregate_dev.sample_sources",
        description="Sample upstream source APIs with switchable faults.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, required=True, help="port to bind")
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiplier of the simulated upstream latency; 0 disables it",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        create_sources_app(latency_scale=args.latency_scale),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        # Hung calls hold their connections open; without a bound, stopping would wait on them.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
