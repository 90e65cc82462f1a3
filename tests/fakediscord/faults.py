"""Injected failures: the next N requests matching a route regex get a given status and body."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
UNKNOWN_CHANNEL = 10003
ALREADY_ACKNOWLEDGED = 40060


@dataclass
class Fault:
    """One injected failure rule. `hits` counts how often it answered; it stops after `times`."""
    pattern: re.Pattern
    status: int
    body: dict | None
    times: int
    retry_after: float | None
    method: str | None
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.hits >= self.times

    def matches(self, method: str, path: str) -> bool:
        if self.exhausted or (self.method and self.method.upper() != method.upper()):
            return False
        return bool(self.pattern.search(path))

    def response(self, path: str) -> tuple[int, dict, dict[str, str]]:
        """(status, JSON body, extra headers) for this hit."""
        self.hits += 1
        headers: dict[str, str] = {}
        body = self.body if self.body is not None else default_body(self.status, path, self.retry_after)
        if self.status == 429:
            retry = self.retry_after if self.retry_after is not None else 0.05
            body = {**body, "retry_after": retry}
            # discord.py treats a 429 without `Via` as a Cloudflare ban and gives up
            headers.update({"Retry-After": f"{retry:.3f}", "Via": "1.1 google", "X-RateLimit-Scope": "user"})
        return self.status, body, headers


def default_body(status: int, path: str, retry_after: float | None = None) -> dict:
    """The body Discord sends for this status on this kind of route."""
    if status == 404:
        if "/callback" in path:
            return {"message": "Unknown interaction", "code": UNKNOWN_INTERACTION}
        if "/messages/" in path:
            return {"message": "Unknown Message", "code": UNKNOWN_MESSAGE}
        if path.startswith("/webhooks/"):
            return {"message": "Unknown Webhook", "code": UNKNOWN_WEBHOOK}
        return {"message": "404: Not Found", "code": 0}
    if status == 429:
        return {"message": "You are being rate limited.", "retry_after": retry_after or 0.05, "global": False}
    if status == 403:
        return {"message": "Missing Permissions", "code": 50013}
    if status >= 500:
        return {"message": f"{status}: Internal Server Error", "code": 0}
    return {"message": f"{status}: fakediscord injected error", "code": 0}


@dataclass
class FaultList:
    rules: list[Fault] = field(default_factory=list)

    def add(self, route_regex: str, status: int, body: dict | None = None, *, times: int = 1,
            retry_after: float | None = None, method: str | None = None) -> Fault:
        rule = Fault(re.compile(route_regex), status, body, times, retry_after, method)
        self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> Fault | None:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return None
