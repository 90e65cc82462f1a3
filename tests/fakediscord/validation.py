"""Discord's message and modal limits: a payload breaking one gets 400 Invalid Form Body (code 50035),
as from the real API, so a test sees the bot's bug instead of a fake that accepts anything."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

INVALID_FORM_BODY = 50035


class FormError(Exception):
    """A payload Discord would refuse; str() says which limit."""


def check_message(payload: dict, n_files: int) -> None:
    # 1. content and files
    content = payload.get("content") or ""
    if len(content) > 2000:
        raise FormError(f"content: must be 2000 or fewer in length (got {len(content)})")
    if n_files > 10:
        raise FormError(f"files: at most 10 (got {n_files})")
    # 2. embeds
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        raise FormError(f"embeds: at most 10 (got {len(embeds)})")
    total = 0
    for i, e in enumerate(embeds):
        for key, limit in (("title", 256), ("description", 4096)):
            if len(e.get(key) or "") > limit:
                raise FormError(f"embeds.{i}.{key}: must be {limit} or fewer in length")
        fields = e.get("fields") or []
        if len(fields) > 25:
            raise FormError(f"embeds.{i}.fields: at most 25")
        for j, f in enumerate(fields):
            if len(f.get("name") or "") > 256 or len(f.get("value") or "") > 1024:
                raise FormError(f"embeds.{i}.fields.{j}: name ≤ 256 and value ≤ 1024")
        if len((e.get("footer") or {}).get("text") or "") > 2048:
            raise FormError(f"embeds.{i}.footer.text: must be 2048 or fewer in length")
        total += sum(len(e.get(k) or "") for k in ("title", "description"))
        total += sum(len(f.get("name") or "") + len(f.get("value") or "") for f in fields)
    if total > 6000:
        raise FormError(f"embeds: total text must be 6000 or fewer (got {total})")
    # 3. components
    check_components(payload.get("components") or [], flags=int(payload.get("flags") or 0))


def check_components(rows: list[dict], *, flags: int = 0, path: str = "components") -> None:
    is_v2 = bool(flags & (1 << 15))
    if not is_v2 and len(rows) > 5:
        raise FormError(f"{path}: at most 5 action rows (got {len(rows)})")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        children = row.get("components") or []
        if row.get("type") == 1 and len(children) > 5:
            raise FormError(f"{path}.{i}.components: at most 5 (got {len(children)})")
        for j, c in enumerate([row, *children]):
            cid = c.get("custom_id")
            if cid is not None:
                if not 1 <= len(cid) <= 100:
                    raise FormError(f"{path}.{i}: custom_id must be 1-100 characters (got {len(cid)})")
                if cid in seen:
                    raise FormError(f"{path}.{i}: custom_id {cid!r} is used twice")
                seen.add(cid)
            if c.get("type") == 2 and len(c.get("label") or "") > 80:
                raise FormError(f"{path}.{i}.{j}.label: must be 80 or fewer in length")


def check_modal(data: dict) -> None:
    if not 1 <= len(data.get("title") or "") <= 45:
        raise FormError("data.title: a modal title must be 1-45 characters")
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        raise FormError("data.custom_id: must be 1-100 characters")
    if not 1 <= len(data.get("components") or []) <= 5:
        raise FormError("data.components: a modal needs 1-5 components")
    for path, text_input in _text_inputs(data.get("components") or [], "data.components"):
        check_text_input(text_input, path)


TEXT_INPUT_MAX = 4000  # Discord's longest text input: value, min_length and max_length


def check_text_input(c: dict, path: str) -> None:
    """A modal's text input (type 4), with Discord's limits on label, placeholder, lengths and prefilled value."""
    if not 1 <= len(c.get("custom_id") or "") <= 100:
        raise FormError(f"{path}.custom_id: must be 1-100 characters")
    if "label" in c and not 1 <= len(c.get("label") or "") <= 45:
        raise FormError(f"{path}.label: must be 1-45 characters (got {len(c.get('label') or '')})")
    if len(c.get("placeholder") or "") > 100:
        raise FormError(f"{path}.placeholder: must be 100 or fewer in length")
    if c.get("min_length") is not None and not 0 <= c["min_length"] <= TEXT_INPUT_MAX:
        raise FormError(f"{path}.min_length: must be between 0 and {TEXT_INPUT_MAX}")
    if c.get("max_length") is not None and not 1 <= c["max_length"] <= TEXT_INPUT_MAX:
        raise FormError(f"{path}.max_length: must be between 1 and {TEXT_INPUT_MAX}")
    if len(c.get("value") or "") > TEXT_INPUT_MAX:
        raise FormError(f"{path}.value: must be {TEXT_INPUT_MAX} or fewer in length (got {len(c['value'])})")


def _text_inputs(components: list, path: str):
    """(path, component) of every text input in a modal's rows or labels (type 18 holds one `component`)."""
    for i, comp in enumerate(components):
        here = f"{path}.{i}"
        if comp.get("type") == 4:
            yield here, comp
        yield from _text_inputs(comp.get("components") or [], here + ".components")
        if isinstance(comp.get("component"), dict):
            yield from _text_inputs([comp["component"]], here + ".component")
