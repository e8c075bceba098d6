"""The model's answers, recorded and replayed: what makes a knowledge build reproducible without the model.

Every call a build makes goes through `RecordedBackend`. It keys the request (model, messages or prompt,
sampling, log-probabilities asked) by sha256 and keeps the reply: the generated text, the top
log-probabilities (rounded, so a live build and a replay see the same numbers), token counts and the
model's seconds. A recorded request is answered from the book; another goes to the model and is recorded.
With no model (`inner=None`) a request the book lacks fails at once as `BackendError("unrecorded")`.

The book is an append-only JSON-lines file in the build's cache (a torn last line is skipped on read),
plus an answers pack shipped with the project (`inference/knowledge/data/llm-answers-<dataset>.jsonl.xz`
with its provenance beside it). A pack holds only keys and the model's replies, never a prompt, so it
carries none of the dataset's titles, genres or ratings: it can ship where the dataset's terms forbid
redistributing the built records (MovieLens-1M). Replaying it through the agents on a user's own copy of
the dataset rebuilds the records with no model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from inference.knowledge.backends import BackendError, ChatRequest, ChatResult, LLMBackend

LOGPROB_DIGITS = 4
BOOK_FILE = "answers.jsonl"


def request_key(model: str, request: ChatRequest) -> str:
    """sha256 of everything that decides a greedy reply: the model and the whole request."""
    payload = json.dumps([model, dataclasses.asdict(request)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def to_row(result: ChatResult) -> dict[str, Any]:
    """A reply as stored: log-probabilities rounded, tokens in the model's order of likelihood."""
    return {"text": result.text,
            "top": [[[token, round(logprob, LOGPROB_DIGITS)] for token, logprob in step.items()]
                    for step in result.top_logprobs],
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "seconds": round(result.seconds, 3), "finish_reason": result.finish_reason}


def from_row(row: Mapping[str, Any]) -> ChatResult:
    return ChatResult(row["text"], [{token: logprob for token, logprob in step} for step in row["top"]],
                      row["prompt_tokens"], row["completion_tokens"], row["seconds"], row["finish_reason"])


def replies_repeating(rows: Mapping[str, dict[str, Any]], texts: Iterable[str], shortest: int = 12) -> set[str]:
    """The keys of the replies that repeat one of the dataset's `texts` (titles of at least `shortest`
    characters; case-insensitive)."""
    replies = "\n".join(row["text"] for row in rows.values()).lower()
    # one pass over all replies narrows the titles to the few found, so each reply is checked against those only
    found = {text.lower() for text in texts if len(text) >= shortest and text.lower() in replies}
    return {key for key, row in rows.items() if any(text in row["text"].lower() for text in found)}


def read_book(path: Path) -> dict[str, dict[str, Any]]:
    """key → reply row of a book file; rows that do not parse (a torn write) are left out."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                rows[entry["key"]] = entry["reply"]
            except (ValueError, KeyError, TypeError):
                continue
    return rows


class RecordedBackend:
    """An LLMBackend that answers recorded requests from the book and records the model's other replies."""

    def __init__(self, inner: LLMBackend | None, model: str, book: Path | None,
                 shipped: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.inner = inner
        self.model = model
        self.book = book
        self.rows: dict[str, dict[str, Any]] = {**(shipped or {}), **(read_book(book) if book else {})}
        self.replayed = 0
        self.recorded = 0
        self.lock = threading.Lock()
        if book:
            book.parent.mkdir(parents=True, exist_ok=True)

    def chat(self, request: ChatRequest) -> ChatResult:
        key = request_key(self.model, request)
        row = self.rows.get(key)
        if row is not None:
            with self.lock:
                self.replayed += 1
            return from_row(row)
        if self.inner is None:
            raise BackendError("unrecorded", f"no recorded answer for request {key} and no model to ask")
        row = to_row(self.inner.chat(request))
        with self.lock:
            self.rows[key] = row
            self.recorded += 1
            if self.book:
                with self.book.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"key": key, "reply": row}, sort_keys=True) + "\n")
        return from_row(row)
