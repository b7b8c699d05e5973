"""The auditor's page: decisions searched and read in a browser, rendered on the server.

The pages carry no JavaScript. A login form takes an API key and keeps it in an
HttpOnly, SameSite=Strict cookie; the key stays the credential, with the same roles
and PII masking as the API. The pages are left out of the API's authentication
middleware and check the cookie themselves, so that a missing or bad key leads to
the login form instead of a JSON 401. Every read of a decision is recorded with
``via="ui"``, like the API's reads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote, urlencode

import msgspec
from jinja2 import Environment
from litestar import Request, Response, Router, get, post
from litestar.datastructures import CacheControlHeader, Cookie, ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, PermissionDeniedException, ValidationException
from litestar.params import Body, FromPath, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from contracts.decisions import DecisionRecord
from contracts.features import FeatureValue, Lineage
from gateway.auditing import as_answered, read_decision, store_error, with_retry_after
from gateway.auth import COOKIE, KeyRing, Principal
from gateway.errors import GatewayError
from writeback.audit_store import AuditUnavailable
from writeback.decision_reads import BadCursor

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
_PUBLIC = {"exclude_from_auth": True}
_HOME = "/ui/decisions"
# Where a login may send the browser afterwards: a page of ours, nothing else.
_NEXT = re.compile(r"/ui/[A-Za-z0-9/_.~%?&=+:-]*")


class LoginForm(msgspec.Struct, frozen=True, kw_only=True):
    """The login form: an API key, and the page to return to."""

    key: Annotated[str, msgspec.Meta(max_length=512)] = ""
    next: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class _LoginRequired(Exception):
    """The page needs a valid key; the browser is sent to the login form."""

    def __init__(self, back: str) -> None:
        super().__init__(back)
        self.back = back


class _PageError(HTTPException):
    """An error the page explains in words."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail=detail, status_code=status_code)


@dataclass(frozen=True, slots=True)
class StalenessBar:
    """A feature's age against its freshness SLA, as the page draws it."""

    percent: float
    """Width of the bar: the share of the SLA used, at most 100."""
    text: str
    """For example ``12.3 s of 60 s``."""
    over: bool
    """The value is older than its SLA allows."""


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One feature of a decision as the page shows it."""

    name: str
    value: str
    masked: bool
    status: str
    source: str
    staleness: StalenessBar | None
    lineage_id: str | None
    lineage: Lineage | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One step of the write-back timeline (or the rollback)."""

    at: datetime
    stage: Literal["committed", "published", "dead_lettered", "redriven", "rolled_back"]
    event_type: str
    event_id: str
    detail: str


def format_duration(ms: float) -> str:
    """A duration in the unit a person reads best: ``830 ms``, ``12.3 s``, ``5 min``."""
    for limit, unit, size in (
        (1_000, "ms", 1),
        (120_000, "s", 1_000),
        (7_200_000, "min", 60_000),
        (172_800_000, "h", 3_600_000),
    ):
        if ms < limit:
            return f"{_number(ms / size)} {unit}"
    return f"{_number(ms / 86_400_000)} d"


def _number(amount: float) -> str:
    text = f"{amount:.1f}" if amount < 100 else f"{amount:.0f}"
    return text.removesuffix(".0")


def format_time(moment: datetime | None) -> str:
    """A timestamp in UTC to the millisecond, or a dash."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_value(value: object) -> str:
    """A feature or output value as JSON shows it (``true``, ``0.25``, ``"c-1"``)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def staleness_bar(feature: FeatureValue) -> StalenessBar | None:
    """The bar of a feature's staleness against its SLA, if it has both."""
    if feature.staleness_ms is None or not feature.max_staleness_ms:
        return None
    share = feature.staleness_ms / feature.max_staleness_ms
    return StalenessBar(
        percent=round(min(1.0, max(0.0, share)) * 100, 1),
        text=f"{format_duration(feature.staleness_ms)} of "
        f"{format_duration(feature.max_staleness_ms)}",
        over=share > 1,
    )


def feature_rows(record: DecisionRecord) -> list[FeatureRow]:
    """Every feature of the decision, in the model's vector order."""
    return [
        FeatureRow(
            name=name,
            value=format_value(feature.value),
            masked=isinstance(feature.value, str) and feature.value.startswith("***"),
            status=feature.status,
            source=feature.source,
            staleness=staleness_bar(feature),
            lineage_id=feature.lineage_id,
            lineage=record.lineage.get(name),
            problem=record.problems.get(name),
        )
        for name, feature in record.features.items()
    ]


def timeline_rows(record: DecisionRecord) -> list[TimelineRow]:
    """The write-back history of the decision's events and its rollback, oldest first."""
    rows = []
    for entry in record.timeline:
        if entry.stage == "committed":
            detail = f"queued for {entry.topic} with the decision"
        elif entry.stage == "published":
            detail = f"{entry.topic}, partition {entry.partition}, offset {entry.offset}"
            detail += f" (attempt {entry.attempts})" if entry.attempts else ""
        elif entry.stage == "dead_lettered":
            detail = f"to {entry.topic}, partition {entry.partition}, offset {entry.offset}"
            detail += f" after: {entry.error}" if entry.error else ""
        else:
            detail = f"by {entry.actor or 'an operator'}"
        rows.append(TimelineRow(entry.at, entry.stage, entry.type, entry.event_id, detail))
    if record.rollback is not None:
        rollback = record.rollback
        rows.append(
            TimelineRow(
                rollback.rolled_back_at,
                "rolled_back",
                "scoregate.decision.rolled_back",
                rollback.event_id,
                f"by {rollback.rolled_back_by}: {rollback.reason}",
            )
        )
    return sorted(rows, key=lambda row: row.at)


def _safe_next(target: str | None) -> str:
    return target if target and _NEXT.fullmatch(target) else _HOME


def _viewer(request: Request[Any, Any, Any], gateway: NamedDependency[Gateway]) -> Principal:
    """The principal of the page's cookie; login form without one, 403 without the role."""
    presented = request.cookies.get(COOKIE, "")
    principal = KeyRing(gateway.settings.api_keys).authenticate(presented) if presented else None
    if principal is None:
        query = request.url.query
        raise _LoginRequired(request.url.path + (f"?{query}" if query else ""))
    if not principal.has("auditor"):
        raise PermissionDeniedException(
            f"key {principal.key_id} does not hold the auditor role: decisions are not shown"
        )
    return principal


def _optional(text: str | None) -> str | None:
    return (text.strip() or None) if text else None


def _moment(text: str | None, name: str) -> datetime | None:
    """A time from a filter field; without an offset it is taken as UTC."""
    if not (text := _optional(text)):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _PageError(400, f"{name}: not a date and time ({text!r})") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Filter = Annotated[str | None, QueryParameter(max_length=128)]
_STATUSES: dict[str | None, Literal["made", "rolled_back"] | None] = {
    None: None,
    "made": "made",
    "rolled_back": "rolled_back",
}


@get("/", opt=_PUBLIC, include_in_schema=False, status_code=303)
async def home() -> Redirect:
    """The search page is where the pages start."""
    return Redirect(_HOME, status_code=303)


@get("/login", opt=_PUBLIC, include_in_schema=False)
async def login_form(
    back: Annotated[str | None, QueryParameter(name="next", max_length=1000)] = None,
) -> Template:
    """The login form."""
    return Template("login.html", context={"next": _safe_next(back), "message": None})


@post("/login", opt=_PUBLIC, include_in_schema=False, status_code=303)
async def login(
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    gateway: NamedDependency[Gateway],
    request: Request[Any, Any, Any],
) -> Response[Any]:
    """Check the key and keep it in the page's cookie; the form again if it is wrong."""
    back = _safe_next(data.next)
    key = data.key.strip()
    principal = KeyRing(gateway.settings.api_keys).authenticate(key) if key else None
    if principal is None:
        context = {"next": back, "message": "That key is not valid."}
        return Template("login.html", context=context, status_code=401)
    if not principal.has("auditor"):
        message = f"Key {principal.key_id} does not hold the auditor role."
        return Template("login.html", context={"next": back, "message": message}, status_code=403)
    cookie = Cookie(
        key=COOKIE,
        value=key,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return Redirect(back, status_code=303, cookies=[cookie])


@post("/logout", opt=_PUBLIC, include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    """Forget the key."""
    gone = Cookie(
        key=COOKIE,
        value="",
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=0,
    )
    return Redirect("/ui/login", status_code=303, cookies=[gone])


@get("/decisions", opt=_PUBLIC, include_in_schema=False)
async def search_page(
    gateway: NamedDependency[Gateway],
    viewer: NamedDependency[Principal],
    subject: Filter = None,
    model: Filter = None,
    status: Filter = None,
    since: Filter = None,
    until: Filter = None,
    purpose: Annotated[str | None, QueryParameter(max_length=500)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
) -> Template:
    """Search decisions by subject, model, status and time; newest first, a page at a time."""
    wanted = _optional(status)
    if wanted not in _STATUSES:
        raise _PageError(400, f"status: {wanted!r} is not made or rolled_back")
    filters = {
        "subject": _optional(subject),
        "model": _optional(model),
        "status": wanted,
        "since": _optional(since),
        "until": _optional(until),
        "purpose": _optional(purpose),
    }
    try:
        page = await gateway.reads.search(
            subject=filters["subject"],
            model=filters["model"],
            status=_STATUSES[wanted],
            since=_moment(since, "since"),
            until=_moment(until, "until"),
            limit=limit,
            cursor=_optional(cursor),
        )
    except BadCursor as exc:
        raise _PageError(400, "cursor: not a cursor of this search") from exc
    kept = {name: value for name, value in filters.items() if value}
    if limit != 50:
        kept["limit"] = str(limit)
    next_page = None
    if page.next_cursor:
        next_page = f"{_HOME}?{urlencode({**kept, 'cursor': page.next_cursor})}"
    read_suffix = f"?{urlencode({'purpose': kept['purpose']})}" if "purpose" in kept else ""
    return Template(
        "decisions.html",
        context={
            "viewer": viewer,
            "filters": filters,
            "models": sorted(gateway.registry.models),
            "page": page,
            "next_page": next_page,
            "first_page": f"{_HOME}?{urlencode(kept)}" if cursor else None,
            "read_suffix": read_suffix,
        },
    )


@get("/decisions/{decision_id:str}", opt=_PUBLIC, include_in_schema=False)
async def decision_page(
    decision_id: FromPath[str],
    gateway: NamedDependency[Gateway],
    viewer: NamedDependency[Principal],
    purpose: Annotated[str | None, QueryParameter(max_length=500)] = None,
) -> Template:
    """One decision: its model, features with staleness and lineage, write-back, reads."""
    record = await read_decision(gateway, decision_id, viewer, "ui", _optional(purpose))
    reads = await gateway.reads.access_log(record.decision_id)
    return Template(
        "decision.html",
        context={
            "viewer": viewer,
            "record": record,
            "features": feature_rows(record),
            "timeline": timeline_rows(record),
            "reads": reads.entries,
        },
    )


def _error_page(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Template:
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 503: "Unavailable"}
    return Template(
        "error.html",
        context={
            "status_code": status_code,
            "title": titles.get(status_code, "Something went wrong"),
            "detail": detail,
        },
        status_code=status_code,
        headers=headers,
    )


def _to_login(request: Request[Any, Any, Any], exc: _LoginRequired) -> Response[Any]:
    return Redirect(f"/ui/login?next={quote(exc.back, safe='/')}", status_code=303)


def _http_page(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    detail = exc.detail
    if isinstance(exc.extra, list):
        found = [
            f"{item.get('key', 'request')}: {item.get('message')}"
            for item in exc.extra
            if isinstance(item, dict)
        ]
        detail = "; ".join(found) or detail
    return _error_page(exc.status_code, detail)


def _gateway_page(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    exc = as_answered(exc)
    return _error_page(exc.status_code, exc.detail, with_retry_after(exc))


def _store_page(request: Request[Any, Any, Any], exc: AuditUnavailable) -> Response[Any]:
    return _gateway_page(request, store_error(exc))


def _internal_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_page(500, "The page could not be made; the error is logged.")


def _filters(environment: Environment) -> None:
    environment.filters["when"] = format_time
    environment.filters["duration"] = format_duration
    environment.filters["json"] = format_value


def ui_template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The pages' templates (Jinja2, autoescaped) and their filters."""
    return TemplateConfig(
        directory=TEMPLATES,
        engine=JinjaTemplateEngine,
        engine_callback=lambda engine: _filters(engine.engine),
    )


ui_handlers: list[ControllerRouterHandler] = [
    Router(
        path="/ui",
        route_handlers=[home, login_form, login, logout, search_page, decision_page],
        dependencies={"viewer": Provide(_viewer, sync_to_thread=False)},
        exception_handlers={
            _LoginRequired: _to_login,
            HTTPException: _http_page,
            # The app's JSON answer to validation errors is more specific than HTTPException.
            ValidationException: _http_page,
            GatewayError: _gateway_page,
            AuditUnavailable: _store_page,
            Exception: _internal_page,
        },
        # Pages may show PII: nothing is cached, framed or leaked through a referrer.
        cache_control=CacheControlHeader(no_store=True),
        response_headers=[
            ResponseHeader(
                name="Content-Security-Policy",
                value="default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
                " frame-ancestors 'none'; base-uri 'none'",
            ),
            ResponseHeader(name="Referrer-Policy", value="no-referrer"),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
        ],
        include_in_schema=False,
    )
]
"""The login form and the auditor's pages, under ``/ui``."""
