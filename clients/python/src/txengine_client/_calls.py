"""Every call, written once as a generator of what to do (send this request,
sleep this long); the sync and async clients each run them with their own
httpx client and clock. So the two cannot differ in what they retry."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Generator, Optional, TypeVar, Union

import httpx

from .errors import Problem, RetriesExhausted, TransportError, UnexpectedAnswer, WaitTimedOut
from .models import (
    RETRIED_ITEM_STATUSES,
    CreatedKey,
    Entry,
    HistoryPage,
    ItemResult,
    Key,
    NewTransaction,
    Transaction,
    _read,
    is_settled,
)

#: The statuses retried with the same request: 503 (not taken now), 409 (the
#: same transaction in flight), 429 (over the key's rate). No other.
RETRIED_STATUSES = frozenset({503, 409, 429})


def is_retried_status(status: int) -> bool:
    return status in RETRIED_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a call retries."""

    #: The most a call spends, from its first try, before it raises
    #: RetriesExhausted; 0: one try only.
    max_elapsed_s: float = 30.0
    #: The first backoff; each retry doubles it up to ``max_backoff_s`` and
    #: waits a random part of it (full jitter), never less than Retry-After.
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def backoff(self, attempt: int, at_least: Optional[float]) -> float:
        doubled: float = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** min(attempt - 1, 16))
        return max(doubled * random.random(), at_least or 0.0)


NEVER = RetryPolicy(max_elapsed_s=0.0, initial_backoff_s=0.0, max_backoff_s=0.0)


@dataclass(frozen=True)
class Send:
    """Send this request; the runner answers the response, or the
    ``httpx.TransportError`` (a timeout, a connection error)."""

    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Union[Send, Sleep]
T = TypeVar("T")
#: A call: yields what to do, is sent each step's result, returns a T.
Call = Generator[Step, Any, T]


class Calls:
    """The API's calls as generators, for one base URL, token and policy."""

    def __init__(self, base_url: str, token: Optional[str], retry: RetryPolicy):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retry = retry

    def request(
        self, method: str, path: str, body: Any = None, params: Optional[dict[str, str]] = None
    ) -> httpx.Request:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Request(
            method, self.base_url + path, json=body, params=params, headers=headers
        )

    def send(
        self,
        request: httpx.Request,
        *,
        retried: bool = True,
        id: Optional[str] = None,
        started: Optional[float] = None,
    ) -> Call[httpx.Response]:
        """Tries ``request`` until an answer that is not retried, or until
        the retry bound (counted from ``started``)."""
        started = time.monotonic() if started is None else started
        attempt = 0
        while True:
            attempt += 1
            answer = yield Send(request)
            asked: Optional[float] = None
            if isinstance(answer, httpx.Response):
                if not is_retried_status(answer.status_code):
                    return answer
                error: BaseException = Problem.from_answer(answer.status_code, _json(answer))
                asked = _retry_after(answer)
            else:
                error = TransportError(f"no answer: {answer}")
                error.__cause__ = answer
            wait = self.retry.backoff(attempt, asked)
            elapsed = time.monotonic() - started
            if not retried or self.retry.max_elapsed_s <= 0 or elapsed + wait > self.retry.max_elapsed_s:
                if attempt == 1 and (not retried or self.retry.max_elapsed_s <= 0):
                    raise error
                raise RetriesExhausted(id, attempt, elapsed, error)
            yield Sleep(wait)

    def read(
        self, cls: type[T], method: str, path: str, body: Any = None, params: Any = None
    ) -> Call[T]:
        answer = yield from self.send(self.request(method, path, body, params))
        return _read(cls, _success(answer))

    def submit(self, tx: NewTransaction) -> Call[Transaction]:
        answer = yield from self.send(
            self.request("POST", "/transactions", tx.to_json()), id=tx.id
        )
        return _read(Transaction, _success(answer))

    def submit_batch(self, items: list[NewTransaction]) -> Call[list[ItemResult]]:
        started = time.monotonic()
        results: list[Optional[ItemResult]] = [None] * len(items)
        open_ = list(range(len(items)))
        attempt = 0
        while True:
            attempt += 1
            body = {"transactions": [items[i].to_json() for i in open_]}
            answer = yield from self.send(
                self.request("POST", "/transactions/batch", body), started=started
            )
            answered = _success(answer)["results"]
            if len(answered) != len(open_):
                raise UnexpectedAnswer(f"{len(answered)} results for {len(open_)} items")
            again: list[int] = []
            asked = 0.0
            for i, item in zip(open_, answered):
                result = _read(ItemResult, item)
                results[i] = result
                if result.status in RETRIED_ITEM_STATUSES:
                    again.append(i)
                    asked = max(asked, float(result.retry_after_s or 0))
            wait = self.retry.backoff(attempt, asked)
            if not again or time.monotonic() - started + wait > self.retry.max_elapsed_s:
                return [result for result in results if result is not None]
            yield Sleep(wait)
            open_ = again

    def transaction(self, id: str) -> Call[Transaction]:
        return (yield from self.read(Transaction, "GET", f"/transactions/{id}"))

    def wait(self, id: str, deadline_s: float) -> Call[Transaction]:
        started = time.monotonic()
        pause = 0.02
        while True:
            tx = yield from self.transaction(id)
            if is_settled(tx.status):
                return tx
            waited = time.monotonic() - started
            if waited >= deadline_s:
                raise WaitTimedOut(id, tx.status, waited)
            yield Sleep(min(pause, deadline_s - waited))
            pause = min(pause * 2, 1.0)

    def history_page(self, account: str, params: dict[str, str]) -> Call[HistoryPage]:
        answer = yield from self.send(
            self.request("GET", f"/accounts/{account}/transactions", params=params)
        )
        data = _success(answer)
        return HistoryPage(
            account=data["account"],
            entries=[_read(Entry, e) for e in data["entries"]],
            next_cursor=data.get("next_cursor"),
        )

    def create_key(self, body: dict[str, Any]) -> Call[CreatedKey]:
        # Never retried: a second try could make two keys.
        answer = yield from self.send(self.request("POST", "/admin/keys", body), retried=False)
        return _read(CreatedKey, _success(answer))

    def keys(self) -> Call[list[Key]]:
        answer = yield from self.send(self.request("GET", "/admin/keys"))
        return [_read(Key, k) for k in _success(answer)["keys"]]

    def revoke_key(self, id: str) -> Call[None]:
        answer = yield from self.send(self.request("DELETE", f"/admin/keys/{id}"))
        _success(answer)
        return None


def history_params(
    limit: Optional[int], since: Optional[str], until: Optional[str], cursor: Optional[str]
) -> dict[str, str]:
    given = {"limit": limit, "since": since, "until": until, "cursor": cursor}
    return {k: str(v) for k, v in given.items() if v is not None}


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _success(response: httpx.Response) -> Any:
    body = _json(response)
    if response.is_success:
        return body
    raise Problem.from_answer(response.status_code, body)


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None
