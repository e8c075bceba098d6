"""The knowledge record: one typed, validated record per item, with a schema version.

Closed vocabularies (audience, mood, occasion) keep the small model's answers checkable; atomic
intents are short normalised phrases that many items share, so a user's intent can be composed online
by retrieval (see intents.py).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "1"

Audience = Literal["children", "families", "teens", "adults", "general audiences"]
Mood = Literal["lighthearted", "funny", "heartwarming", "romantic", "thrilling", "tense", "dark", "scary",
               "thought-provoking", "epic", "whimsical", "sad", "inspiring", "nostalgic"]
Occasion = Literal["family movie night", "date night", "night in alone", "evening with friends",
                   "holiday season", "weekend afternoon", "late night", "film club"]
AUDIENCES: tuple[str, ...] = Audience.__args__
MOODS: tuple[str, ...] = Mood.__args__
OCCASIONS: tuple[str, ...] = Occasion.__args__


def normalise_phrase(text: str) -> str:
    """Lower case, ASCII letters/digits/'-' and single spaces: 'Watch a 1990s Comedy!' → 'watch a 1990s comedy'."""
    text = re.sub(r"[^a-z0-9\-' ]+", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip(" -'")


class KnowledgeRecord(BaseModel):
    """What we know about one item; every claim traceable to evidence ids."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1"] = SCHEMA_VERSION
    item_id: str = Field(min_length=1)
    category_path: list[str] = Field(min_length=1, max_length=4)
    attributes: list[str] = Field(default_factory=list, max_length=8)
    audience: list[Audience] = Field(min_length=1, max_length=2)
    moods: list[Mood] = Field(min_length=1, max_length=3)
    occasions: list[Occasion] = Field(min_length=1, max_length=3)
    complements: list[str] = Field(default_factory=list, max_length=4)
    complement_items: list[str] = Field(default_factory=list, max_length=8)
    substitutes: list[str] = Field(default_factory=list, max_length=4)
    tagline: str | None = Field(default=None, max_length=120)
    intents: list[str] = Field(min_length=3, max_length=8)
    rationale: str = Field(min_length=1, max_length=600)
    evidence_ids: list[str] = Field(min_length=1)

    @field_validator("intents")
    @classmethod
    def _intents(cls, values: list[str]) -> list[str]:
        out: list[str] = []
        for value in values:
            phrase = normalise_phrase(value)
            if not 1 <= len(phrase.split()) <= 6:
                raise ValueError(f"intent {value!r} must be 1-6 words")
            if phrase not in out:
                out.append(phrase)
        if len(out) < 3:
            raise ValueError("at least 3 distinct intents")
        return out

    @field_validator("audience", "moods", "occasions")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        return list(dict.fromkeys(values))

    @field_validator("evidence_ids")
    @classmethod
    def _evidence_ids(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not re.fullmatch(r"E\d+", v)]
        if bad:
            raise ValueError(f"evidence ids must look like E1, E2…: {bad}")
        return values


class Judgement(BaseModel):
    """The compact JSON the reasoner asks the model for: one short descriptive tagline."""

    model_config = ConfigDict(extra="ignore")

    tagline: str = Field(min_length=3, max_length=120)


JUDGEMENT_JSON_SCHEMA = {
    "type": "object",
    "properties": {"tagline": {"type": "string", "minLength": 3, "maxLength": 100}},
    "required": ["tagline"],
}
