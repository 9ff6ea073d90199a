"""The shared cases (clients/cases.json) with the sync and the async client."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any, Callable

import pytest

import txengine_client as tx
from txengine_client import RETRIED_ITEM_STATUSES, NEVER, is_retried_status

from conftest import CASES


def test_the_retry_rules_are_the_shared_ones() -> None:
    for rule in CASES["retry_rules"]:
        assert is_retried_status(rule["status"]) is rule["retried"], rule
    assert RETRIED_ITEM_STATUSES == set(CASES["batch_retried_statuses"])


def test_backoff_doubles_under_its_cap_with_jitter_and_honours_retry_after() -> None:
    policy = tx.RetryPolicy(max_elapsed_s=10, initial_backoff_s=0.1, max_backoff_s=0.4)
    for _ in range(200):
        assert policy.backoff(1, None) <= 0.1
        assert policy.backoff(3, None) <= 0.4
        assert policy.backoff(9, None) <= 0.4
        assert policy.backoff(1, 2.0) >= 2.0
    assert len({policy.backoff(3, None) for _ in range(20)}) > 1


def test_connection_errors_are_retried_but_making_a_key_never_is() -> None:
    # Nothing listens on port 1 of loopback: every try is refused at once.
    with tx.Client("http://127.0.0.1:1", "t", retry=tx.RetryPolicy(max_elapsed_s=0.3)) as client:
        with pytest.raises(tx.RetriesExhausted) as retried:
            client.balance("a")
        assert retried.value.attempts > 1
        assert isinstance(retried.value.last, tx.TransportError)
        with pytest.raises(tx.TransportError):
            client.create_key(["*"])


def test_ids_are_uuid7_made_before_the_first_try() -> None:
    first, second = tx.debit("a", 1), tx.debit("a", 1)
    assert uuid.UUID(first.id).version == 7
    assert first.id != second.id
    assert first.id < second.id or first.id[:13] == second.id[:13]


class Blocking:
    """The async client called as the sync one is, so one runner drives both."""

    def __init__(self, client: tx.AsyncClient, loop: asyncio.AbstractEventLoop):
        self.client, self.loop = client, loop

    def with_token(self, token: str) -> "Blocking":
        return Blocking(self.client.with_token(token), self.loop)

    def with_retry(self, retry: tx.RetryPolicy) -> "Blocking":
        return Blocking(self.client.with_retry(retry), self.loop)

    def history(self, account: str, **query: Any) -> list[tx.Entry]:
        async def collect() -> list[tx.Entry]:
            return [e async for e in self.client.history(account, **query)]

        return self.loop.run_until_complete(collect())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self.client, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(call(*args, **kwargs))


@pytest.fixture(params=["sync", "async"])
def clients(request: pytest.FixtureRequest, url: str, admin_token: str, api_key: str):
    if request.param == "sync":
        admin = tx.Client(url, admin_token)
        yield admin, admin.with_token(api_key)
        admin.close()
    else:
        loop = asyncio.new_event_loop()
        admin = Blocking(tx.AsyncClient(url, admin_token), loop)
        yield admin, admin.with_token(api_key)
        loop.run_until_complete(admin.client.aclose())
        loop.close()


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_case(case: dict[str, Any], clients: Any) -> None:
    admin, key = clients
    prefix = f"py-{uuid.uuid4().hex[:6]}"
    Runner(admin, key, prefix).run(case)


def fields_match(expected: Any, actual: Any) -> None:
    if dataclasses.is_dataclass(actual):
        actual = dataclasses.asdict(actual)
    for field, want in (expected or {}).items():
        assert actual.get(field) == want, f"{field}: expected {want!r} in {actual!r}"


class Runner:
    def __init__(self, admin: Any, key: Any, prefix: str):
        self.admin, self.key, self.prefix = admin, key, prefix
        self.transactions: dict[str, tx.NewTransaction] = {}
        self.keys: dict[str, tx.CreatedKey] = {}
        self.times: dict[str, str] = {}

    def account(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def run(self, case: dict[str, Any]) -> None:
        for name, spec in case["accounts"].items():
            bounds = {k: spec[k] for k in ("asset", "min_balance", "max_balance") if k in spec}
            self.admin.put_account(self.account(name), **bounds)
            self.admin.set_balance(self.account(name), spec.get("balance", 0))
        for step in case["steps"]:
            try:
                self.step(step)
            except AssertionError as e:
                raise AssertionError(f"step {step}: {e}") from e

    def transaction_of(self, body: dict[str, Any]) -> tx.NewTransaction:
        name = lambda field: self.account(body[field])  # noqa: E731
        options: dict[str, Any] = {}
        if "asset" in body:
            options["asset"] = body["asset"]
        if "metadata" in body:
            options["metadata"] = body["metadata"]
        kind = body["type"]
        if kind == "debit":
            return tx.debit(name("account"), body["amount"], **options)
        if kind == "credit":
            return tx.credit(name("account"), body["amount"], **options)
        if kind == "transfer":
            return tx.transfer(name("account"), name("to"), body["amount"], **options)
        if kind == "hold":
            to = self.account(body["to"]) if "to" in body else None
            return tx.hold(name("account"), body["amount"], to=to, timeout_s=body.get("timeout_s"), **options)
        if kind == "capture":
            return tx.capture(self.transactions[body["hold"]].id, body.get("amount"), **options)
        if kind == "void":
            return tx.void(self.transactions[body["hold"]].id, **options)
        if kind == "postings":
            moves = [tx.Posting(self.account(p["from"]), self.account(p["to"]), p["amount"]) for p in body["postings"]]
            return tx.postings(moves, **options)
        raise AssertionError(f"a type the cases do not have: {kind}")

    def refused_or(self, step: dict[str, Any], call: Callable[[], Any]) -> Any:
        expected = step.get("refused")
        if expected is None:
            return call()
        with pytest.raises(tx.TxEngineError) as raised:
            call()
        # A refusal that is not retried comes as it is, never wrapped.
        problem = raised.value
        assert isinstance(problem, tx.Problem), f"expected {expected}, got {problem!r}"
        assert (problem.status, problem.slug) == (expected["status"], expected["slug"]), str(problem)
        return None

    def step(self, step: dict[str, Any]) -> None:
        client = self.key
        if "key" in step:
            client = client.with_token(self.keys[step["key"]].secret)
        if step.get("retry") == "never":
            client = client.with_retry(NEVER)
        if "submit" in step:
            new = self.transaction_of(step["submit"])
            if "same_id_as" in step:
                new = dataclasses.replace(new, id=self.transactions[step["same_id_as"]].id)
            if "as" in step:
                self.transactions[step["as"]] = new
            answer = self.refused_or(step, lambda: client.submit(new))
            if answer is None:
                return
            assert answer.id == new.id
            fields_match(step.get("answers"), answer)
            if "settles" in step:
                fields_match(step["settles"], self.key.wait(new.id, 20))
        elif "batch" in step:
            items = [self.transaction_of(body) for body in step["batch"]]
            results = client.submit_batch(items)
            assert [r.id for r in results] == [i.id for i in items]
            for expected, result in zip(step["results"], results):
                fields_match(expected, result)
            for expected, item in zip(step["settles"], items):
                if expected is not None:
                    fields_match(expected, self.key.wait(item.id, 20))
        elif "balance" in step:
            fields_match(step["is"], client.balance(self.account(step["balance"])))
        elif "account" in step and "mark" not in step:
            fields_match(step["is"], client.account(self.account(step["account"])))
        elif "transaction" in step:
            known = self.transactions.get(step["transaction"])
            id = known.id if known else tx.new_id()
            found = self.refused_or(step, lambda: client.transaction(id))
            if found is not None:
                fields_match(step["is"], found)
        elif "history" in step:
            query = {"limit": step["limit"]} if "limit" in step else {}
            entries = list(client.history(self.account(step["history"]), **query))
            assert len(entries) == len(step["entries"]), entries
            for expected, entry in zip(step["entries"], entries):
                fields_match(expected, entry)
        elif "mark" in step:
            newest = next(iter(client.history(self.account(step["account"]), limit=1)))
            self.times[step["mark"]] = newest.at
        elif "balance_at" in step:
            at = self.times[step["at"]]
            fields_match(step["is"], client.balance_at(self.account(step["balance_at"]), at))
        elif "put_account" in step:
            found = self.refused_or(step, lambda: self.admin.put_account(self.account(step["put_account"]), **step["spec"]))
            if found is not None:
                fields_match(step["is"], found)
        elif "create_key" in step:
            spec = step["create_key"]
            accounts = [self.account(a) for a in spec["accounts"]]
            created = self.admin.create_key(accounts, rate_per_s=spec.get("rate_per_s"), burst=spec.get("burst"))
            self.keys[step["as"]] = created
        elif "keys_include" in step:
            assert self.keys[step["keys_include"]].id in [k.id for k in self.admin.keys()]
        elif "revoke" in step:
            self.admin.revoke_key(self.keys[step["revoke"]].id)
        else:
            raise AssertionError(f"a step this runner does not know: {step}")
