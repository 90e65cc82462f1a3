"""Typed slash-command options (from the schema the bot registered) and modal-submit components.

Discord's client refuses what the schema forbids (unknown option, missing required one, value outside
choices/min/max), so the fake refuses it too with a ValueError; pass validate=False to send it anyway.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import payloads
from .records import FakeChannel, FakeRole, FakeUser

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11


@dataclass(frozen=True)
class Upload:
    """A file a user attaches to an attachment option. `declared_size`: the size its attachment payload claims
    (default: its real length), a lie the bot must not trust when it downloads `data`."""
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"
    declared_size: int | None = None


def build_command_data(fake: "FakeDiscord", command: dict, path: list[str], values: dict[str, Any],
                       *, validate: bool) -> dict:
    """The `data` of a type-2 interaction for `/name [group] [sub]` with `values` typed per the schema."""
    # 1. walk down to the (sub)command that takes the values
    schema_options = command.get("options") or []
    chain: list[dict] = []
    for name in path:
        sub = next((o for o in schema_options if o["name"] == name and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)), None)
        if sub is None:
            raise ValueError(f"/{command['name']} has no subcommand {name!r}")
        chain.append(sub)
        schema_options = sub.get("options") or []
    # 2. type each value
    resolved: dict[str, dict] = {}
    typed = [_option(fake, schema_options, name, value, resolved, validate) for name, value in values.items()]
    if validate:
        missing = [o["name"] for o in schema_options if o.get("required") and o["name"] not in values]
        if missing:
            raise ValueError(f"/{command['name']}: required option(s) {missing} missing")
    # 3. nest into the subcommand chain
    for sub in reversed(chain):
        typed = [{"name": sub["name"], "type": sub["type"], "options": typed}]
    data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": command.get("type", 1),
                            "options": typed}
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return data


def _option(fake: "FakeDiscord", schema: list[dict], name: str, value: Any, resolved: dict, validate: bool) -> dict:
    spec = next((o for o in schema if o["name"] == name), None)
    if spec is None:
        if validate:
            raise ValueError(f"unknown option {name!r}; the command has {[o['name'] for o in schema]}")
        return {"name": name, "type": STRING, "value": value}
    otype = spec["type"]
    typed = _coerce(fake, otype, value, resolved)
    if validate:
        _check(spec, typed)
    return {"name": name, "type": otype, "value": typed}


def _coerce(fake: "FakeDiscord", otype: int, value: Any, resolved: dict) -> Any:
    if otype == STRING:
        return str(value)
    if otype == INTEGER:
        return int(value)
    if otype == NUMBER:
        return float(value)
    if otype == BOOLEAN:
        return bool(value)
    if otype == USER:
        u = value if isinstance(value, FakeUser) else fake.users[int(value)]
        resolved.setdefault("users", {})[str(u.id)] = payloads.user(u)
        if u.in_guild:
            resolved.setdefault("members", {})[str(u.id)] = payloads.member(u, fake.permissions_of(u), with_user=False)
        return str(u.id)
    if otype == ROLE:
        r = value if isinstance(value, FakeRole) else fake.roles[int(value)]
        resolved.setdefault("roles", {})[str(r.id)] = payloads.role(r)
        return str(r.id)
    if otype == CHANNEL:
        c = value if isinstance(value, FakeChannel) else fake.channels[int(value)]
        resolved.setdefault("channels", {})[str(c.id)] = {**payloads.channel(c, fake), "permissions": str(payloads.ALL_PERMISSIONS)}
        return str(c.id)
    if otype == ATTACHMENT:
        if not isinstance(value, Upload):
            raise TypeError("an attachment option takes fakediscord.Upload(filename, data, content_type)")
        att = fake.store_attachment(value.filename, value.data, value.content_type, declared_size=value.declared_size)
        resolved.setdefault("attachments", {})[str(att.id)] = payloads.attachment(att)
        return str(att.id)
    raise NotImplementedError(f"fakediscord does not type option type {otype} yet")


def _check(spec: dict, value: Any) -> None:
    name = spec["name"]
    choices = spec.get("choices")
    if choices and value not in [c["value"] for c in choices]:
        raise ValueError(f"option {name!r}: {value!r} is not one of {[c['value'] for c in choices]}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.get("min_value") is not None and value < spec["min_value"]:
            raise ValueError(f"option {name!r}: {value} < min_value {spec['min_value']}")
        if spec.get("max_value") is not None and value > spec["max_value"]:
            raise ValueError(f"option {name!r}: {value} > max_value {spec['max_value']}")
    if isinstance(value, str) and spec["type"] == STRING:
        if spec.get("min_length") is not None and len(value) < spec["min_length"]:
            raise ValueError(f"option {name!r}: shorter than min_length {spec['min_length']}")
        if spec.get("max_length") is not None and len(value) > spec["max_length"]:
            raise ValueError(f"option {name!r}: longer than max_length {spec['max_length']}")


def modal_submit_components(modal: dict, values: dict[str, Any]) -> list[dict]:
    """The `components` of a modal submit: the modal's own layout with each input's submitted value.

    Keys of `values` are input custom_ids, or labels (case-insensitive). Inputs not named keep their
    pre-filled `value`. A key that matches no input is a ValueError.
    """
    used: set[str] = set()

    def value_for(comp: dict, label: str | None) -> Any:
        for key in (comp.get("custom_id"), label, comp.get("label")):
            if key is None:
                continue
            for k in values:
                if k == key or (isinstance(key, str) and k.lower() == key.lower()):
                    used.add(k)
                    return values[k]
        return None

    def convert(comp: dict, label: str | None = None) -> dict | None:
        ctype = comp.get("type")
        if ctype == 1:
            return {"type": 1, "components": [c for c in (convert(x) for x in comp.get("components", [])) if c]}
        if ctype == 18:  # Label wrapping one component
            inner = convert(comp["component"], comp.get("label"))
            return {"type": 18, "component": inner} if inner else None
        if ctype == 4:  # text input
            v = value_for(comp, label)
            return {"type": 4, "custom_id": comp["custom_id"], "value": str(v if v is not None else comp.get("value") or "")}
        if ctype in (3, 5, 6, 7, 8):
            v = value_for(comp, label)
            vals = v if isinstance(v, list) else ([] if v is None else [v])
            return {"type": ctype, "custom_id": comp["custom_id"], "values": [str(x) for x in vals]}
        return None

    out = [c for c in (convert(c) for c in modal.get("components", [])) if c]
    unknown = set(values) - used
    if unknown:
        raise ValueError(f"modal {modal.get('custom_id')!r} has no input(s) {sorted(unknown)}")
    return out
