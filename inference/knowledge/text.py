"""The text an item's vector encodes: evidence first, then the verified knowledge fields."""

from __future__ import annotations

from inference.knowledge.evidence import Evidence, evidence_text


def knowledge_text(evidence: Evidence, record: dict | None = None) -> str:
    """Evidence text plus, when a record exists, its KG-supported director claim, tagline, audience, moods,
    occasions and intents."""
    if not record:
        return evidence_text(evidence)
    extra = [f"{a[0].upper()}{a[1:]}." for a in record.get("attributes", []) if a.startswith("directed by ")]
    if record.get("tagline"):
        extra.append(f"{record['tagline'].rstrip('.')}.")
    for label, key in (("Audience", "audience"), ("Mood", "moods"), ("Occasions", "occasions"),
                       ("Intents", "intents")):
        values = record.get(key) or []
        if values:
            extra.append(f"{label}: {', '.join(values)}.")
    return evidence_text(evidence, extra)
