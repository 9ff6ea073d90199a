"""What a call can fail with."""

from __future__ import annotations

from typing import Any, Mapping, Optional


class TxEngineError(Exception):
    """Every error of this client."""


class Problem(TxEngineError):
    """A refusal: the API's ``application/problem+json`` answer."""

    def __init__(self, status: int, slug: str, title: str, detail: str, id: Optional[str]):
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        #: ``rule-broken``, ``not-found``, ``unavailable``, ...
        self.slug = slug
        self.title = title
        self.detail = detail
        #: The transaction it is about, when one was claimed: after a 503 it
        #: may still be applied, so retry with this id, never a new one.
        self.id = id

    @classmethod
    def from_answer(cls, status: int, body: Any) -> "Problem":
        if isinstance(body, Mapping) and isinstance(body.get("type"), str):
            kind = body["type"]
            slug = kind.removeprefix("urn:txengine:problem:")
            return cls(
                int(body.get("status", status)),
                slug,
                str(body.get("title", "")),
                str(body.get("detail", "")),
                body.get("id"),
            )
        return cls(status, "unknown", "", str(body), None)


class RetriesExhausted(TxEngineError):
    """Retried until the caller's bound and still not taken. For a
    transaction, ``id`` is the one to retry with later: it may yet be
    applied, and a new id could apply it twice."""

    def __init__(
        self, id: Optional[str], attempts: int, elapsed_s: float, last: BaseException
    ):
        named = f" (retry with id {id})" if id else ""
        super().__init__(f"gave up after {attempts} tries in {elapsed_s:.1f} s{named}: {last}")
        self.id = id
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last = last

    @property
    def problem(self) -> Optional[Problem]:
        """The refusal of the last try, if it was one."""
        return self.last if isinstance(self.last, Problem) else None


class WaitTimedOut(TxEngineError):
    """``wait`` reached its deadline with the transaction still unsettled."""

    def __init__(self, id: str, status: str, waited_s: float):
        super().__init__(f"transaction {id} still {status} after {waited_s:.1f} s")
        self.id = id
        self.status = status
        self.waited_s = waited_s


class TransportError(TxEngineError):
    """No answer: a connection error or a try's timeout (``__cause__`` is
    httpx's error)."""


class UnexpectedAnswer(TxEngineError):
    """An answer that is not what the API promises."""
