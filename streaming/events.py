"""Event and output contracts, and the pure validation that sends bad records to the dead-letter topic.

Input event (JSON, key = user id): event_id, user_id, item_id (str), action (view|click|cart|purchase|
rate), ts (epoch ms, int), optional value (number). Unknown fields are ignored. A missing or ill-typed
required field, an unknown item, an oversized or non-UTF-8 message becomes a dead letter carrying the
reason and the original bytes: nothing is dropped silently.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

ACTIONS = frozenset({"view", "click", "cart", "purchase", "rate"})
MAX_EVENT_BYTES = 8 * 1024


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
    """Why a record was rejected, with its original bytes (base64) and where it came from."""

    reason: str
    detail: str
    original_b64: str
    source_topic: str = ""
    received_ms: int = 0

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
REASONS = (BAD_JSON, NOT_UTF8, OVERSIZED, MISSING_FIELD, WRONG_TYPE, BAD_VALUE, UNKNOWN_ITEM)

_REQUIRED: dict[str, type] = {"event_id": str, "user_id": str, "item_id": str, "action": str, "ts": int}


def parse_event(raw: bytes, known_items: frozenset[str] | set[str] | None = None,
                max_bytes: int = MAX_EVENT_BYTES, source_topic: str = "") -> Event | DeadLetter:
    """Validate one raw Kafka value: an Event, or a DeadLetter saying why not."""

    def reject(reason: str, detail: str) -> DeadLetter:
        return DeadLetter(reason, detail, base64.b64encode(raw).decode(), source_topic, int(time.time() * 1000))

    if len(raw) > max_bytes:
        return reject(OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return reject(NOT_UTF8, str(error))
    try:
        payload: Any = json.loads(text)
    except json.JSONDecodeError as error:
        return reject(BAD_JSON, str(error))
    if not isinstance(payload, dict):
        return reject(BAD_JSON, f"expected a JSON object, got {type(payload).__name__}")
    for name, kind in _REQUIRED.items():
        if name not in payload or payload[name] is None:
            return reject(MISSING_FIELD, f"missing required field {name!r}")
        value = payload[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return reject(WRONG_TYPE, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    value = payload.get("value")
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        return reject(WRONG_TYPE, f"field 'value' must be a number, got {type(value).__name__}")
    if payload["action"] not in ACTIONS:
        return reject(BAD_VALUE, f"action {payload['action']!r} not in {sorted(ACTIONS)}")
    if not payload["event_id"] or not payload["user_id"]:
        return reject(BAD_VALUE, "event_id and user_id must be non-empty")
    if payload["ts"] < 0:
        return reject(BAD_VALUE, f"ts {payload['ts']} is negative")
    if known_items is not None and payload["item_id"] not in known_items:
        return reject(UNKNOWN_ITEM, f"item {payload['item_id']!r} is not in the catalogue")
    return Event(payload["event_id"], payload["user_id"], payload["item_id"], payload["action"],
                 payload["ts"], None if value is None else float(value))
