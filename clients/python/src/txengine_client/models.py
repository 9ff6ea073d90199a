"""What the API takes and answers. Amounts are integers of minor units of
the account's asset (``USD/2``: cents)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping, Optional, TypeVar

Kind = Literal["debit", "credit", "transfer", "hold", "capture", "void", "postings"]

#: Where a transaction stands.
Status = Literal[
    "pending", "applied", "rejected", "held", "capturing", "captured", "voided", "expired"
]

#: Where one item of a batch stands.
ItemStatus = Literal[
    "pending",
    "applied",
    "rejected",
    "conflict",
    "in_flight",
    "invalid",
    "forbidden",
    "rate_limited",
    "unavailable",
]

#: The batch statuses the client sends again, with the same id.
RETRIED_ITEM_STATUSES: frozenset[str] = frozenset({"in_flight", "rate_limited", "unavailable"})


def is_settled(status: str) -> bool:
    """Whether a transaction has its outcome: not ``pending``, and not a hold
    in the middle of its capture (a ``held`` hold is settled)."""
    return status not in ("pending", "capturing")


def new_id() -> str:
    """A UUIDv7: time-ordered, made before the first try."""
    return str(uuid7())


def uuid7() -> uuid.UUID:
    # uuid.uuid7 is in the standard library from Python 3.14 only.
    import os
    import time

    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 bits of rand_a
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class Posting:
    """One movement of a postings transaction."""

    from_: str
    to: str
    amount: int
    asset: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"from": self.from_, "to": self.to, "amount": self.amount}
        if self.asset is not None:
            body["asset"] = self.asset
        return body

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Posting":
        return cls(data["from"], data["to"], data["amount"], data.get("asset"))


@dataclass(frozen=True)
class NewTransaction:
    """A transaction to submit. Build it with :func:`debit`, :func:`transfer`
    and the others: its id is made then, so every retry is the same
    transaction."""

    type: Kind
    id: str = field(default_factory=new_id)
    account: Optional[str] = None
    to: Optional[str] = None
    amount: Optional[int] = None
    hold: Optional[str] = None
    timeout_s: Optional[int] = None
    postings: Optional[tuple[Posting, ...]] = None
    asset: Optional[str] = None
    metadata: Optional[Mapping[str, str]] = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "postings":
                value = [p.to_json() for p in value]
            elif f.name == "metadata":
                value = dict(value)
            body[f.name] = value
        return body


def debit(account: str, amount: int, **options: Any) -> NewTransaction:
    return NewTransaction("debit", account=account, amount=amount, **options)


def credit(account: str, amount: int, **options: Any) -> NewTransaction:
    return NewTransaction("credit", account=account, amount=amount, **options)


def transfer(from_: str, to: str, amount: int, **options: Any) -> NewTransaction:
    return NewTransaction("transfer", account=from_, to=to, amount=amount, **options)


def hold(
    account: str,
    amount: int,
    *,
    to: Optional[str] = None,
    timeout_s: Optional[int] = None,
    **options: Any,
) -> NewTransaction:
    """Reserves ``amount`` of ``account`` until a capture, a void or its
    timeout; a capture moves it to ``to`` (a debit when there is none)."""
    return NewTransaction(
        "hold", account=account, amount=amount, to=to, timeout_s=timeout_s, **options
    )


def capture(hold_id: str, amount: Optional[int] = None, **options: Any) -> NewTransaction:
    """Moves all of a hold, or ``amount`` of it (the rest is released)."""
    return NewTransaction("capture", hold=hold_id, amount=amount, **options)


def void(hold_id: str, **options: Any) -> NewTransaction:
    return NewTransaction("void", hold=hold_id, **options)


def postings(moves: list[Posting], **options: Any) -> NewTransaction:
    """Several movements, in order, all or none."""
    return NewTransaction("postings", postings=tuple(moves), **options)


T = TypeVar("T")


def _read(cls: type[T], data: Mapping[str, Any]) -> T:
    """A dataclass from an answer: the fields it knows (a newer server may
    answer more), absent optional ones as None."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Transaction:
    id: str
    status: str
    # What was asked (to a key that sees the source): the kind, and for all
    # but postings the account, `to`, the amount; a capture's or void's hold.
    type: Optional[str] = None
    account: Optional[str] = None
    to: Optional[str] = None
    amount: Optional[int] = None
    hold: Optional[str] = None
    reason: Optional[str] = None
    balance_after: Optional[int] = None
    asset: Optional[str] = None
    captured_amount: Optional[int] = None
    posting: Optional[int] = None
    postings: Optional[list[dict[str, Any]]] = None
    metadata: Optional[dict[str, str]] = None

    @property
    def settled(self) -> bool:
        return is_settled(self.status)


@dataclass(frozen=True)
class ItemResult:
    id: Optional[str]
    status: str
    reason: Optional[str] = None
    balance_after: Optional[int] = None
    posting: Optional[int] = None
    retry_after_s: Optional[int] = None


@dataclass(frozen=True)
class Account:
    account: str
    asset: str
    min_balance: int
    max_balance: int
    balance: int
    pending: int
    available: int
    created_at: str
    metadata: Optional[dict[str, str]] = None


@dataclass(frozen=True)
class Balance:
    account: str
    asset: str
    balance: int
    pending: int
    available: int


@dataclass(frozen=True)
class BalanceAt:
    account: str
    balance: int
    at: str
    since: str


@dataclass(frozen=True)
class Entry:
    type: str
    amount: int
    delta: int
    status: str
    balance_after: int
    at: str
    id: Optional[str] = None
    counterparty: Optional[str] = None
    hold: Optional[str] = None
    posting: Optional[int] = None
    reason: Optional[str] = None
    metadata: Optional[dict[str, str]] = None


@dataclass(frozen=True)
class HistoryPage:
    account: str
    entries: list[Entry]
    next_cursor: Optional[str] = None


@dataclass(frozen=True)
class Key:
    id: str
    accounts: list[str]
    created_at_ms: int
    rate_per_s: Optional[int] = None
    burst: Optional[int] = None


@dataclass(frozen=True)
class CreatedKey(Key):
    secret: str = ""
