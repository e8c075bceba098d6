"""Event and output contracts, and the pure validation that sends bad records to the dead-letter topic.

Input event (JSON, key = user id): event_id, user_id, item_id (str), action (view|click|cart|purchase|
rate), ts (epoch ms, int), optional value (number). Unknown fields are ignored. Whatever the bytes,
`parse_event` returns an Event or a DeadLetter carrying the reason and the original bytes (truncated
with their length and sha256 when oversized): it never raises, so no input can stop the job.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = frozenset({"view", "click", "cart", "purchase", "rate"})
MAX_EVENT_BYTES = 8 * 1024
MAX_ID_CHARS = 256  # event_id and user_id: every state keeps 64 event ids, so long ids would bloat it
MAX_DEPTH = 16  # nesting of JSON arrays/objects; an event is one flat object
MAX_TS = 2**63 - 1  # a Java long: what Kafka, Flink and most consumers can hold
MAX_DETAIL_CHARS = 300
MAX_KEY_BYTES = 1024  # a dead letter's Kafka key; a longer original key is replaced by its sha256


@dataclass(frozen=True)
class Event:
    """A validated user event."""

    event_id: str
    user_id: str
    item_id: str
    action: str
    ts: int
    value: float | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


@dataclass(frozen=True)
class DeadLetter:
    """Why a record was rejected, with its original bytes (base64) and where it came from.

    The original is kept whole up to MAX_EVENT_BYTES; a longer one is cut there (`truncated`), and
    `original_size` / `original_sha256` always describe the whole original. `event_ids` names the
    events a letter accounts for when they were valid but could not be scored (reason `unscorable`).
    """

    reason: str
    detail: str
    original_b64: str
    source_topic: str = ""
    received_ms: int = 0
    original_size: int = 0
    original_sha256: str = ""
    truncated: bool = False
    event_ids: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)


# reason codes, also the label values of the dead-letter counter
BAD_JSON = "bad_json"
NOT_UTF8 = "not_utf8"
OVERSIZED = "oversized"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_VALUE = "bad_value"
UNKNOWN_ITEM = "unknown_item"
UNSCORABLE = "unscorable"  # a valid event whose user Serve rejected, or kept failing on while healthy
UNPARSEABLE = "unparseable"  # the parser itself failed: a bug, but the record is kept, not the job stopped
REASONS = (BAD_JSON, NOT_UTF8, OVERSIZED, MISSING_FIELD, WRONG_TYPE, BAD_VALUE, UNKNOWN_ITEM, UNSCORABLE,
           UNPARSEABLE)

_REQUIRED: dict[str, type] = {"event_id": str, "user_id": str, "item_id": str, "action": str, "ts": int}


def dead_letter(raw: bytes, reason: str, detail: str, source_topic: str = "",
                event_ids: tuple[str, ...] = ()) -> DeadLetter:
    """A DeadLetter for `raw`, bounded in size whatever `raw` and `detail` are."""
    kept = raw[:MAX_EVENT_BYTES]
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "…"
    return DeadLetter(reason, detail, base64.b64encode(kept).decode(), source_topic, int(time.time() * 1000),
                      len(raw), hashlib.sha256(raw).hexdigest(), len(kept) < len(raw), tuple(event_ids))


def dead_letter_key(key: bytes | None) -> bytes:
    """The Kafka key a dead letter is written with: the original key, or its sha256 when that is too long."""
    if key is None:
        return b""
    return key if len(key) <= MAX_KEY_BYTES else b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def parse_event(raw: bytes | None, known_items: frozenset[str] | set[str] | None = None,
                max_bytes: int = MAX_EVENT_BYTES, source_topic: str = "") -> Event | DeadLetter:
    """Validate one raw Kafka value: an Event, or a DeadLetter saying why not. Never raises."""
    raw = b"" if raw is None else bytes(raw)
    try:
        result = _validate(raw, known_items, max_bytes)
    except Exception as error:  # a bug in the checks below must cost one record, not the job
        return dead_letter(raw, UNPARSEABLE, f"{type(error).__name__}: {error}", source_topic)
    if isinstance(result, Event):
        return result
    reason, detail = result
    return dead_letter(raw, reason, detail, source_topic)


def _validate(raw: bytes, known_items: frozenset[str] | set[str] | None, max_bytes: int) -> Event | tuple[str, str]:
    if len(raw) > max_bytes:
        return OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}"
    if not raw:
        return BAD_JSON, "empty message"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return NOT_UTF8, str(error)
    # json.loads recurses once per level (RecursionError, or a native stack overflow on a small thread
    # stack); counting brackets first keeps the common flat event on the fast path
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        return BAD_JSON, f"nested deeper than {MAX_DEPTH} levels"
    try:
        payload: Any = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, NaN/Infinity, ints over 4300 digits
        return BAD_JSON, str(error)
    if not isinstance(payload, dict):
        return BAD_JSON, f"expected a JSON object, got {type(payload).__name__}"
    for name, kind in _REQUIRED.items():
        if name not in payload or payload[name] is None:
            return MISSING_FIELD, f"missing required field {name!r}"
        value = payload[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return WRONG_TYPE, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
    value = payload.get("value")
    if value is not None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return WRONG_TYPE, f"field 'value' must be a number, got {type(value).__name__}"
        value = _finite_float(value)
        if value is None:
            return BAD_VALUE, "field 'value' must be a finite number"
    for name in ("event_id", "user_id", "item_id"):
        problem = _id_problem(payload[name])
        if problem:
            return BAD_VALUE, f"field {name!r} {problem}"
    if payload["action"] not in ACTIONS:
        return BAD_VALUE, f"action {payload['action'][:40]!r} not in {sorted(ACTIONS)}"
    if not 0 <= payload["ts"] <= MAX_TS:
        return BAD_VALUE, f"ts must be epoch ms in [0, 2^63), got {str(payload['ts'])[:40]}"
    if known_items is not None and payload["item_id"] not in known_items:
        return UNKNOWN_ITEM, f"item {payload['item_id'][:80]!r} is not in the catalogue"
    return Event(payload["event_id"], payload["user_id"], payload["item_id"], payload["action"],
                 payload["ts"], value)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(value: int | float) -> float | None:
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        return None
    return number if math.isfinite(number) else None


def _id_problem(text: str) -> str:
    """Why an id cannot be used (empty, too long, not encodable as UTF-8), or '' when it can."""
    if not text:
        return "must be non-empty"
    if len(text) > MAX_ID_CHARS:
        return f"is {len(text)} characters long (limit {MAX_ID_CHARS})"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: no Kafka key can carry it
            return "is not valid Unicode (lone surrogate)"
    return ""


def _nesting_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
