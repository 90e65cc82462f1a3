"""Rate-limit buckets like Discord's: fixed windows per bucket key, X-RateLimit-* headers on every answer,
429 (with Via, Retry-After and JSON retry_after) once a window's budget is spent.

Discord's real limits are dynamic and told through these headers; a test chooses the numbers it wants to
exercise (e.g. 5 per 2 s per webhook token) with `fake.rate_limit(...)`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class RateLimit:
    """One rule: at most `limit` requests per `per_s` seconds per bucket key (the regex's `key` group, else
    the whole match). `limited` counts the 429s it answered, `requests` the requests it counted."""
    pattern: re.Pattern
    limit: int
    per_s: float
    method: str | None
    name: str
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # key → (window start, used)
    limited: int = 0
    requests: int = 0

    def key(self, method: str, path: str) -> str | None:
        if self.method and self.method.upper() != method.upper():
            return None
        match = self.pattern.search(path)
        if match is None:
            return None
        return match.group("key") if "key" in self.pattern.groupindex else match.group(0)

    def take(self, key: str, now: float) -> tuple[bool, dict[str, str], float]:
        """(allowed, headers, retry_after) for one request of bucket `key` at `now`."""
        start, used = self.windows.get(key, (now, 0))
        if now - start >= self.per_s:
            start, used = now, 0
        reset_after = max(0.0, start + self.per_s - now)
        allowed = used < self.limit
        if allowed:
            used += 1
            self.requests += 1
        else:
            self.limited += 1
        self.windows[key] = (start, used)
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(max(0, self.limit - used)),
                   "X-RateLimit-Reset": f"{start + self.per_s:.3f}", "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                   "X-RateLimit-Bucket": self.name}
        return allowed, headers, reset_after


@dataclass
class RateLimits:
    rules: list[RateLimit] = field(default_factory=list)

    def add(self, route_regex: str, limit: int, per_s: float, *, method: str | None = None) -> RateLimit:
        rule = RateLimit(re.compile(route_regex), limit, per_s, method, name=f"fake{len(self.rules)}")
        self.rules.append(rule)
        return rule

    def take(self, method: str, path: str, now: float) -> tuple[RateLimit, bool, dict[str, str], float] | None:
        """The first rule matching the request, and its verdict; None when no rule applies."""
        for rule in self.rules:
            key = rule.key(method, path)
            if key is not None:
                allowed, headers, retry_after = rule.take(key, now)
                return rule, allowed, headers, retry_after
        return None
