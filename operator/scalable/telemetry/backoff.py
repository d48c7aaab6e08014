"""How long to wait before the next attempt: exponential backoff with full jitter, bounded.

Attempt ``n`` (0-based) waits a uniform random time in ``[0, min(cap, base * 2**n)]`` (the
"full jitter" of AWS's architecture blog: clients that failed together do not retry together),
at least what the server asked for in ``Retry-After`` (but never more than ``cap``). A policy
gives up after ``max_attempts`` failed attempts in a row or once ``deadline_s`` has passed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    #: failed attempts in a row before giving up (a success starts the count again)
    max_attempts: int = 8
    #: seconds from the first attempt after which no further wait starts; None: no deadline
    deadline_s: float | None = 120.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={self.base_s}, cap_s={self.cap_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.deadline_s is not None and self.deadline_s < 0:
            raise ValueError(f"deadline_s must be >= 0, got {self.deadline_s}")

    def delay(self, failures: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """The wait after ``failures`` failed attempts in a row (1 after the first failure)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(0, failures - 1))
        wait = (rng or random).uniform(0, ceiling)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait

    def gives_up(self, failures: int, elapsed_s: float, next_wait_s: float = 0.0) -> bool:
        """Whether to stop after ``failures`` failed attempts in a row, ``elapsed_s`` into the drain."""
        if failures >= self.max_attempts:
            return True
        return self.deadline_s is not None and elapsed_s + next_wait_s > self.deadline_s
