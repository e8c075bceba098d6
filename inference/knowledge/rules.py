"""Rule checks: what the evidence (catalogue genres, year, title) already decides about a claim.

Each rule answers SUPPORTED, CONTRADICTED (with a reason) or UNDECIDED; only undecided claims may go
to the LLM verifier. The rules are deliberately conservative: they contradict a claim only when the
genres make it implausible (a children's audience for a horror film, a scary mood for a pure comedy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided"

# (supported by any of, contradicted when any of these is present and none of `supported`)
_RULES: dict[str, dict[str, tuple[set[str], set[str]]]] = {
    "audience": {
        "children": ({"Children's", "Animation"}, {"Horror", "Film-Noir", "Crime", "Thriller", "War"}),
        "families": ({"Children's"}, {"Horror", "Film-Noir"}),
        "adults": ({"Horror", "Film-Noir", "Crime", "War", "Thriller"}, {"Children's"}),
        "teens": (set(), set()),
        "general audiences": (set(), set()),
    },
    "moods": {
        "scary": ({"Horror"}, {"Comedy", "Children's", "Animation", "Musical", "Romance", "Documentary"}),
        "funny": ({"Comedy"}, {"Horror", "War", "Film-Noir", "Documentary"}),
        "romantic": ({"Romance"}, {"Horror", "War", "Documentary", "Children's"}),
        "lighthearted": ({"Comedy", "Children's", "Animation", "Musical"}, {"Horror", "Film-Noir", "War"}),
        "whimsical": ({"Children's", "Animation", "Fantasy"}, {"Horror", "Film-Noir", "War", "Documentary"}),
        "heartwarming": ({"Children's", "Animation"}, {"Horror", "Film-Noir"}),
        "dark": ({"Film-Noir", "Horror", "Crime"}, {"Children's", "Animation", "Musical"}),
        "tense": ({"Thriller", "Horror", "Mystery", "Film-Noir"}, {"Children's", "Animation", "Musical"}),
        "thrilling": ({"Thriller", "Action", "Adventure"}, {"Documentary"}),
        "epic": ({"War", "Adventure", "Fantasy"}, set()),
        "thought-provoking": ({"Documentary", "Drama"}, set()),
        "sad": ({"War"}, {"Children's", "Animation"}),
        "inspiring": (set(), {"Horror"}),
        "nostalgic": (set(), set()),
    },
    "occasions": {
        "family movie night": ({"Children's", "Animation"}, {"Horror", "Film-Noir", "Crime", "Thriller", "War"}),
        "date night": ({"Romance"}, {"Children's", "Documentary", "War", "Horror"}),
        "late night": ({"Horror", "Thriller"}, {"Children's", "Animation"}),
        "night in alone": (set(), set()),
        "evening with friends": ({"Comedy", "Action"}, set()),
        "holiday season": (set(), set()),
        "weekend afternoon": ({"Children's", "Adventure"}, {"Horror", "Film-Noir"}),
        "film club": ({"Film-Noir", "Documentary"}, set()),
    },
}
HOLIDAY = re.compile(r"\b(christmas|santa|holiday|xmas|miracle on)\b", re.I)
GENRE_WORDS = {  # words in free text that assert a genre
    "horror": "Horror", "comedy": "Comedy", "comedic": "Comedy", "romance": "Romance", "romantic": "Romance",
    "war": "War", "western": "Western", "cowboy": "Western", "documentary": "Documentary",
    "animated": "Animation", "cartoon": "Animation", "musical": "Musical", "sci-fi": "Sci-Fi",
    "alien": "Sci-Fi", "spaceship": "Sci-Fi", "noir": "Film-Noir", "detective": "Mystery",
}
LEAK = re.compile(r"\b(genres?|facts?|evidence|json|tagline|claim|E\d+)\b", re.I)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str = ""


def check_choice(field: str, option: str, genres: list[str], title: str = "", year: str = "") -> Verdict:
    """Rule verdict for a closed-vocabulary claim (audience / moods / occasions)."""
    present = set(genres)
    if field == "occasions" and option == "holiday season":
        return Verdict(SUPPORTED) if HOLIDAY.search(title) else Verdict(UNDECIDED)
    if field == "occasions" and option == "film club" and year.isdigit() and int(year) < 1960:
        return Verdict(SUPPORTED, f"released {year}")
    supported, contradicted = _RULES[field][option]
    if present & supported:
        return Verdict(SUPPORTED, f"genre {sorted(present & supported)[0]}")
    clash = present & contradicted
    if clash:
        return Verdict(CONTRADICTED, f"{field} {option!r} contradicts genre {sorted(clash)[0]}")
    return Verdict(UNDECIDED)


def check_tagline(tagline: str, genres: list[str], title: str) -> Verdict:
    """Rule verdict for the free-text tagline: length, no prompt leakage, no genre the evidence lacks."""
    words = tagline.split()
    if not 3 <= len(words) <= 16:
        return Verdict(CONTRADICTED, f"tagline has {len(words)} words (3-16 allowed)")
    if LEAK.search(tagline):
        return Verdict(CONTRADICTED, f"tagline repeats the prompt ({LEAK.search(tagline).group(0)!r})")
    title_words = set(normalise(title).split())
    words_n = normalise(tagline).split()
    if sum(w in title_words for w in words_n) >= 0.6 * len(words_n):
        return Verdict(CONTRADICTED, "tagline mostly repeats the title")
    present = set(genres)
    for word in re.findall(r"[a-z\-]+", tagline.lower()):
        genre = GENRE_WORDS.get(word)
        if genre and genre not in present and not (genre == "Romance" and word == "romantic" and "Drama" in present):
            return Verdict(CONTRADICTED, f"tagline says {word!r} but the genres are {', '.join(genres)}")
    return Verdict(UNDECIDED)


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
