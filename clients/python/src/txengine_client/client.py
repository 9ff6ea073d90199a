"""The sync and async clients: each runs the calls of ``_calls`` with its own
httpx client. What a call does, and what it retries, is written once there."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Generic, Iterator, Mapping, Optional, TypeVar

import httpx

from ._calls import Call, Calls, RetryPolicy, Send, Sleep, T, history_params
from .models import (
    Account,
    Balance,
    BalanceAt,
    CreatedKey,
    Entry,
    ItemResult,
    Key,
    NewTransaction,
    Transaction,
)


def _account_body(
    asset: Optional[str],
    min_balance: Optional[int],
    max_balance: Optional[int],
    metadata: Optional[Mapping[str, str]],
) -> dict[str, Any]:
    given = {"asset": asset, "min_balance": min_balance, "max_balance": max_balance}
    body: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _key_body(accounts: list[str], rate_per_s: Optional[int], burst: Optional[int]) -> dict[str, Any]:
    body: dict[str, Any] = {"accounts": accounts}
    if rate_per_s is not None:
        body["rate_per_s"] = rate_per_s
    if burst is not None:
        body["burst"] = burst
    return body


H = TypeVar("H", httpx.Client, httpx.AsyncClient)
S = TypeVar("S", bound="_Surface[Any]")


class _Surface(Generic[H]):
    """What both clients hold: the calls (base URL, token, retry bound) and
    an httpx client, shared by the copies ``with_token`` and ``with_retry``
    make."""

    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        *,
        try_timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        http: Optional[H] = None,
    ):
        self._calls = Calls(base_url, token, retry)
        self._http: H = http or self._new_http(try_timeout_s)

    def _new_http(self, try_timeout_s: float) -> H:
        raise NotImplementedError

    def with_token(self: S, token: str) -> S:
        """The same client (and connections) sending another token."""
        return type(self)(self._calls.base_url, token, retry=self._calls.retry, http=self._http)

    def with_retry(self: S, retry: RetryPolicy) -> S:
        """The same client (and connections) with another retry bound."""
        return type(self)(self._calls.base_url, self._calls.token, retry=retry, http=self._http)


class Client(_Surface[httpx.Client]):
    """A client of one engine with one token (an API key, or the admin token
    for the admin calls).

    Every call follows the retry rules: 503, 409 (in flight), timeouts and
    connection errors are retried with the same request, with backoff and
    jitter, never sooner than ``Retry-After``, until ``retry.max_elapsed_s``;
    a 429 waits as long as it says; nothing else is retried, and making a
    key never is."""

    def _new_http(self, try_timeout_s: float) -> httpx.Client:
        return httpx.Client(timeout=try_timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        answer: Any = None
        try:
            while True:
                step = call.send(answer)
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    answer = None
                else:
                    assert isinstance(step, Send)
                    try:
                        answer = self._http.send(step.request)
                    except httpx.TransportError as e:
                        answer = e
        except StopIteration as done:
            result: T = done.value
            return result

    def submit(self, tx: NewTransaction) -> Transaction:
        """Submits a transaction: ``pending`` once the broker has it, or its
        outcome when it was already settled (the same id again)."""
        return self._run(self._calls.submit(tx))

    def submit_batch(self, items: list[NewTransaction]) -> list[ItemResult]:
        """Up to 1,000 transactions: one result per item, in order. Items
        answered ``in_flight``, ``rate_limited`` or ``unavailable`` are sent
        again with their ids within the retry bound; past it they keep that
        status, and their ids are the ones to retry with."""
        return self._run(self._calls.submit_batch(items))

    def transaction(self, id: str) -> Transaction:
        return self._run(self._calls.transaction(id))

    def wait(self, id: str, deadline_s: float = 30.0) -> Transaction:
        """Polls a transaction until it is settled, backing off from 20 ms
        to 1 s; WaitTimedOut after ``deadline_s``."""
        return self._run(self._calls.wait(id, deadline_s))

    def account(self, account: str) -> Account:
        return self._run(self._calls.read(Account, "GET", f"/accounts/{account}"))

    def balance(self, account: str) -> Balance:
        return self._run(self._calls.read(Balance, "GET", f"/balance/{account}"))

    def balance_at(self, account: str, at: str) -> BalanceAt:
        """The balance at ``at`` (an RFC 3339 time)."""
        return self._run(
            self._calls.read(BalanceAt, "GET", f"/balance/{account}", params={"at": at})
        )

    def history(
        self,
        account: str,
        *,
        limit: Optional[int] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
    ) -> Iterator[Entry]:
        """An account's entries, newest first, read page by page as the
        iteration goes."""
        cursor: Optional[str] = None
        while True:
            params = history_params(limit, since, until, cursor)
            page = self._run(self._calls.history_page(account, params))
            yield from page.entries
            cursor = page.next_cursor
            if cursor is None:
                return

    def put_account(
        self,
        account: str,
        *,
        asset: Optional[str] = None,
        min_balance: Optional[int] = None,
        max_balance: Optional[int] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Account:
        """Admin: makes an account or changes the fields given."""
        body = _account_body(asset, min_balance, max_balance, metadata)
        return self._run(self._calls.read(Account, "PUT", f"/accounts/{account}", body))

    def set_balance(self, account: str, balance: int) -> Balance:
        """Admin: sets a balance (within the account's bounds)."""
        body = {"balance": balance}
        return self._run(self._calls.read(Balance, "PUT", f"/balance/{account}", body))

    def create_key(
        self, accounts: list[str], *, rate_per_s: Optional[int] = None, burst: Optional[int] = None
    ) -> CreatedKey:
        """Admin: makes a key (its secret is shown only here). Never retried."""
        return self._run(self._calls.create_key(_key_body(accounts, rate_per_s, burst)))

    def keys(self) -> list[Key]:
        return self._run(self._calls.keys())

    def revoke_key(self, id: str) -> None:
        self._run(self._calls.revoke_key(id))


class AsyncClient(_Surface[httpx.AsyncClient]):
    """:class:`Client` for asyncio: the same calls, awaited."""

    def _new_http(self, try_timeout_s: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=try_timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        answer: Any = None
        try:
            while True:
                step = call.send(answer)
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    answer = None
                else:
                    assert isinstance(step, Send)
                    try:
                        answer = await self._http.send(step.request)
                    except httpx.TransportError as e:
                        answer = e
        except StopIteration as done:
            result: T = done.value
            return result

    async def submit(self, tx: NewTransaction) -> Transaction:
        return await self._run(self._calls.submit(tx))

    async def submit_batch(self, items: list[NewTransaction]) -> list[ItemResult]:
        return await self._run(self._calls.submit_batch(items))

    async def transaction(self, id: str) -> Transaction:
        return await self._run(self._calls.transaction(id))

    async def wait(self, id: str, deadline_s: float = 30.0) -> Transaction:
        return await self._run(self._calls.wait(id, deadline_s))

    async def account(self, account: str) -> Account:
        return await self._run(self._calls.read(Account, "GET", f"/accounts/{account}"))

    async def balance(self, account: str) -> Balance:
        return await self._run(self._calls.read(Balance, "GET", f"/balance/{account}"))

    async def balance_at(self, account: str, at: str) -> BalanceAt:
        return await self._run(
            self._calls.read(BalanceAt, "GET", f"/balance/{account}", params={"at": at})
        )

    async def history(
        self,
        account: str,
        *,
        limit: Optional[int] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
    ) -> AsyncIterator[Entry]:
        cursor: Optional[str] = None
        while True:
            params = history_params(limit, since, until, cursor)
            page = await self._run(self._calls.history_page(account, params))
            for entry in page.entries:
                yield entry
            cursor = page.next_cursor
            if cursor is None:
                return

    async def put_account(
        self,
        account: str,
        *,
        asset: Optional[str] = None,
        min_balance: Optional[int] = None,
        max_balance: Optional[int] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Account:
        body = _account_body(asset, min_balance, max_balance, metadata)
        return await self._run(self._calls.read(Account, "PUT", f"/accounts/{account}", body))

    async def set_balance(self, account: str, balance: int) -> Balance:
        body = {"balance": balance}
        return await self._run(self._calls.read(Balance, "PUT", f"/balance/{account}", body))

    async def create_key(
        self, accounts: list[str], *, rate_per_s: Optional[int] = None, burst: Optional[int] = None
    ) -> CreatedKey:
        return await self._run(self._calls.create_key(_key_body(accounts, rate_per_s, burst)))

    async def keys(self) -> list[Key]:
        return await self._run(self._calls.keys())

    async def revoke_key(self, id: str) -> None:
        await self._run(self._calls.revoke_key(id))
