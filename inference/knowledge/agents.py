"""The agents and their explicit chain of thought: extractor → reasoner ⇄ verifier (bounded rounds).

- Extractor (evidence.py): catalogue facts and the KG retrieval tool, each fact with an id. No LLM.
- Reasoner: code derives what the evidence already says (category path, attributes, substitutes); the
  model judges only small closed fields, scored by log-probability over lettered options (one token,
  options rotated per item, calibrated against the model's content-free letter bias), plus one compact
  schema-constrained JSON field (a tagline).
- Verifier: rules first (rules.py); only claims the rules cannot decide go to the model as a yes/no
  question; a rejected claim goes back to the reasoner with the reason, at most `max_rounds` rounds.

Every step appends a line to the item's trace, which is stored with the record.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference.knowledge.backends import BackendError, ChatRequest, LLMBackend, complete_json
from inference.knowledge.evidence import Evidence, decade_of
from inference.knowledge.rules import CONTRADICTED, SUPPORTED, UNDECIDED, Verdict, check_choice, check_tagline
from inference.knowledge.schema import (
    AUDIENCES,
    JUDGEMENT_JSON_SCHEMA,
    MOODS,
    OCCASIONS,
    SCHEMA_VERSION,
    Judgement,
    KnowledgeRecord,
)

PROMPTS_DIR = Path(__file__).parent / "prompts"
LETTERS = "ABCDEFGHIJKLMNOP"
PRIOR_FLOOR = 0.02  # calibration never divides by less: a letter the model never says is not made a winner
FIELDS: dict[str, tuple[tuple[str, ...], int]] = {"audience": (AUDIENCES, 1), "moods": (MOODS, 2),
                                                  "occasions": (OCCASIONS, 1)}
NOUN = {"Action": "action movie", "Adventure": "adventure", "Animation": "animated film", "Children's": "kids movie",
        "Comedy": "comedy", "Crime": "crime story", "Documentary": "documentary", "Drama": "drama",
        "Fantasy": "fantasy", "Film-Noir": "film noir", "Horror": "horror movie", "Musical": "musical",
        "Mystery": "mystery", "Romance": "romance", "Sci-Fi": "science fiction", "Thriller": "thriller",
        "War": "war film", "Western": "western"}
# genre nouns whose plural is not an -s or -ies: "other 1990s science fiction films", not "science fictions"
IRREGULAR_PLURALS = {"science fiction": "science fiction films", "film noir": "films noirs",
                     "fantasy": "fantasy films"}
# how code writes a record's text fields (substitutes, rationale): part of the item cache key, so a change
# rebuilds the records (from the answer book, with no model) instead of mixing two wordings
RECORD_FORMAT = "2"


def plural(noun: str) -> str:
    """The plural of a genre noun: "comedy" → "comedies", "thriller" → "thrillers", "film noir" → "films noirs"."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def rejected_claims(count: int) -> str:
    return "no claim rejected" if count == 0 else f"{count} claim{'s' if count != 1 else ''} rejected"


ADJECTIVE = {"Action": "action", "Adventure": "adventure", "Animation": "animated", "Children's": "family",
             "Comedy": "comic", "Crime": "crime", "Documentary": "documentary", "Drama": "dramatic",
             "Fantasy": "fantasy", "Film-Noir": "noir", "Horror": "horror", "Musical": "musical",
             "Mystery": "mystery", "Romance": "romantic", "Sci-Fi": "sci-fi", "Thriller": "suspense",
             "War": "war", "Western": "western"}


@dataclass(frozen=True)
class Prompts:
    """Prompt templates from prompts/<version>/; `version` includes a digest of the files' contents."""

    version: str
    system: str
    choose: str
    tagline: str
    verify: str
    questions: dict[str, str]
    judge: str  # one raw completion answering all closed fields
    prefills: dict[str, str] = field(default_factory=dict)  # field → pre-filled answer start

    @classmethod
    def load(cls, name: str = "v2") -> Prompts:
        folder = PROMPTS_DIR / name
        if not (folder / "judge.txt").is_file():
            raise FileNotFoundError(f"prompt set {folder} has no judge.txt (versions: "
                                    f"{', '.join(sorted(p.name for p in PROMPTS_DIR.iterdir() if p.is_dir()))})")
        texts = {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}
        digest = hashlib.sha256("".join(k + v for k, v in texts.items()).encode()).hexdigest()[:8]
        return cls(f"{name}-{digest}", texts["system.txt"].strip(), texts["choose.txt"], texts["tagline.txt"],
                   texts["verify.txt"], yaml.safe_load(texts["questions.yaml"]), texts["judge.txt"],
                   yaml.safe_load(texts.get("judge.yaml", "")) or {})


@dataclass
class ItemResult:
    """The outcome for one item: the record (None if it failed), flags, trace, failures, cost."""

    item_id: str
    record: dict[str, Any] | None
    verified: bool = False
    repaired: bool = False
    trace: list[str] = field(default_factory=list)
    rejections: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    choices: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    top_status: dict[str, str] = field(default_factory=dict)  # rule verdict on the model's unconstrained top pick
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def rotation(item_id: str, size: int) -> int:
    """Deterministic per-item offset for the options' order (spreads the model's letter bias)."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % size


def word_distribution(top: dict[str, float], options: tuple[str, ...]) -> dict[str, float] | None:
    """Probability of each option from next-token log-probs: a token counts for the options whose text
    starts with it (' light' → 'lighthearted'); None when no top token starts any option."""
    mass = dict.fromkeys(options, 0.0)
    for token, logprob in top.items():
        word = token.strip().lower()
        if len(word) < 2 or not word.isascii():
            continue
        hits = [o for o in options if o.startswith(word)]
        for option in hits:
            mass[option] += math.exp(logprob) / len(hits)
    total = sum(mass.values())
    return {o: m / total for o, m in mass.items()} if total > 0 else None


def letter_distribution(top: dict[str, float], letters: str) -> dict[str, float] | None:
    """Probabilities of each option letter from the first token's top log-probs (None if no letter appears)."""
    mass: dict[str, float] = {}
    for token, logprob in top.items():
        key = token.strip().rstrip(".):").upper()
        if len(key) == 1 and key in letters:
            mass[key] = mass.get(key, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {letter: mass.get(letter, 0.0) / total for letter in letters}


class Agents:
    """Reasoner and verifier sharing one backend, prompts and the calibration priors."""

    def __init__(self, backend: LLMBackend, prompts: Prompts, priors: dict[str, dict[str, float]] | None = None,
                 max_rounds: int = 3, llm_verifier: bool = False, verify_threshold: float = 0.5,
                 reask: bool = False) -> None:
        self.backend = backend
        self.reask = reask
        self.prompts = prompts
        self.priors = priors or {}
        self.max_rounds = max_rounds
        self.llm_verifier = llm_verifier
        self.verify_threshold = verify_threshold

    # ------------------------------------------------------------------ model calls

    def _messages(self, user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.prompts.system}, {"role": "user", "content": user}]

    def _chat(self, result: ItemResult | None, request: ChatRequest):
        reply = self.backend.chat(request)
        if result is not None:
            result.llm_calls += 1
            result.prompt_tokens += reply.prompt_tokens
            result.completion_tokens += reply.completion_tokens
            result.seconds += reply.seconds
        return reply

    def letter_probs(self, evidence_text: str, question: str, options: list[str],
                     result: ItemResult | None = None) -> dict[str, float] | None:
        """Raw letter probabilities for one lettered question (one generated token)."""
        letters = LETTERS[: len(options)]
        listing = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options, strict=True))
        user = self.prompts.choose.format(evidence=evidence_text, question=question, options=listing)
        reply = self._chat(result, ChatRequest(self._messages(user), max_tokens=1, top_logprobs=20))
        return letter_distribution(reply.top_logprobs[0] if reply.top_logprobs else {}, letters)

    def judge_words(self, evidence_text: str, result: ItemResult | None = None) -> dict[str, dict[str, float] | None]:
        """All closed fields in one conversation (raw completion, pre-filled answers): per field the
        probability of each option from the next-token log-probs of its first word.

        The best option is appended before the next field, so each call evaluates only a few new tokens
        on top of the server's cached prefix.
        """
        prompt = self.prompts.judge.format(evidence=evidence_text)
        out: dict[str, dict[str, float] | None] = {}
        for number, name in enumerate(FIELDS):
            prompt += ("" if number == 0 else ". ") + self.prompts.prefills[name]
            reply = self._chat(result, ChatRequest([], max_tokens=1, top_logprobs=20, prompt=prompt))
            probs = word_distribution(reply.top_logprobs[0] if reply.top_logprobs else {}, FIELDS[name][0])
            out[name] = probs
            prompt += " " + (max(probs, key=probs.get) if probs else FIELDS[name][0][0])
        return out

    def calibrate(self, rotations: int = 3) -> dict[str, dict[str, float]]:
        """The model's letter bias per field with content-free facts, averaged over option rotations."""
        if self.prompts.judge:
            return self._calibrate_judge()
        priors: dict[str, dict[str, float]] = {}
        for name, (options, _) in FIELDS.items():
            letters = LETTERS[: len(options)]
            total = dict.fromkeys(letters, 0.0)
            for r in range(rotations):
                shift = (r * len(options)) // rotations
                probs = self.letter_probs("(no facts)", self.prompts.questions[name],
                                          list(options[shift:] + options[:shift])) or {}
                for letter in letters:
                    total[letter] += probs.get(letter, 1.0 / len(letters)) / rotations
            priors[name] = total
        self.priors = priors
        return priors

    def _calibrate_judge(self) -> dict[str, dict[str, float]]:
        """The model's preference for each option with no facts (divided out of every item's answer)."""
        words = self.judge_words("(no facts)")
        self.priors = {name: words[name] or {o: 1.0 / len(opts) for o in opts} for name, (opts, _) in FIELDS.items()}
        return self.priors

    def calibrated_ranking(self, name: str, probs: dict[str, float] | None,
                           result: ItemResult) -> list[tuple[str, float]]:
        """Options by calibrated probability: p(option | facts) / p(option | no facts), renormalised."""
        options = FIELDS[name][0]
        if probs is None:
            result.trace.append(f"reasoner: {name}: no option among the model's top tokens; uniform")
            probs = {o: 1.0 / len(options) for o in options}
        prior = self.priors.get(name, {})
        scores = {o: probs[o] / max(prior.get(o, 0.0), PRIOR_FLOOR) if prior else probs[o] for o in options}
        total = sum(scores.values()) or 1.0
        return sorted(((o, s / total) for o, s in scores.items()), key=lambda kv: (-kv[1], options.index(kv[0])))

    def first_rankings(self, evidence: Evidence, result: ItemResult) -> dict[str, list[tuple[str, float]]]:
        """Round-one rankings of every closed field from one pre-filled completion."""
        words = self.judge_words(evidence.text(), result)
        return {name: self.calibrated_ranking(name, words[name], result) for name in FIELDS}

    def rank_options(self, evidence: Evidence, name: str, options: tuple[str, ...], exclude: dict[str, str],
                     result: ItemResult) -> list[tuple[str, float]]:
        """Options of a field ranked by calibrated probability; rejected ones are left out and named."""
        allowed = [o for o in options if o not in exclude]
        shift = rotation(evidence.item_id, len(allowed))
        ordered = allowed[shift:] + allowed[:shift]
        question = self.prompts.questions[name]
        if exclude:
            question += " (Not: " + "; ".join(f"{o} - {why}" for o, why in exclude.items()) + ")"
        probs = self.letter_probs(evidence.text(), question, ordered, result)
        if probs is None:
            result.trace.append(f"reasoner: {name}: no option letter among the model's top tokens; uniform")
            probs = {LETTERS[i]: 1.0 / len(ordered) for i in range(len(ordered))}
        prior = self.priors.get(name, {})
        scores = {}
        for i, option in enumerate(ordered):
            letter = LETTERS[i]
            # contextual calibration only when the prior covers the same number of options
            bias = prior.get(letter) if len(prior) == len(options) and not exclude else None
            scores[option] = probs[letter] / max(bias, 1e-3) if bias else probs[letter]
        total = sum(scores.values()) or 1.0
        return sorted(((o, s / total) for o, s in scores.items()), key=lambda kv: (-kv[1], options.index(kv[0])))

    def llm_verify(self, evidence: Evidence, claim: str, result: ItemResult) -> float:
        """P(yes) that a claim holds, from the first token's log-probs (the verifier's model step)."""
        user = self.prompts.verify.format(evidence=evidence.text(), claim=claim)
        reply = self._chat(result, ChatRequest(self._messages(user), max_tokens=1, top_logprobs=20))
        yes = no = 0.0
        for token, logprob in (reply.top_logprobs[0] if reply.top_logprobs else {}).items():
            word = token.strip().lower()
            if word in ("yes", "y"):
                yes += math.exp(logprob)
            elif word in ("no", "n"):
                no += math.exp(logprob)
        return yes / (yes + no) if yes + no > 0 else 0.5

    # ------------------------------------------------------------------ verification

    def verify_choice(self, evidence: Evidence, name: str, option: str, result: ItemResult) -> Verdict:
        """Rules first; the model only for undecided claims."""
        verdict = check_choice(name, option, evidence.genres, evidence.title, evidence.year)
        if verdict.status != UNDECIDED or not self.llm_verifier:
            return verdict
        claim = {"audience": f"This film is mainly for {option}.", "moods": f"The mood of this film is {option}.",
                 "occasions": f"This film suits a {option}."}[name]
        p_yes = self.llm_verify(evidence, claim, result)
        if p_yes < self.verify_threshold:
            return Verdict(CONTRADICTED, f"model verifier: P(yes)={p_yes:.2f} for {claim!r}")
        return Verdict(SUPPORTED, f"model verifier: P(yes)={p_yes:.2f}")

    def decide_field(self, evidence: Evidence, name: str, result: ItemResult,
                     first: list[tuple[str, float]] | None = None) -> list[str]:
        """Reasoner ⇄ verifier for one field: the model ranks the options, the verifier vetoes.

        Options the evidence supports come first (in the model's order), then undecided ones; contradicted
        ones are rejected with their reason. With `reask` (or the model verifier rejecting), the reasons go
        back to the model for a new ranking, at most `max_rounds` rounds.
        """
        options, k = FIELDS[name]
        rejected: dict[str, str] = {}
        accepted: list[str] = []
        ranking = first or self.rank_options(evidence, name, options, rejected, result)
        result.choices[name] = [(o, round(p, 4)) for o, p in ranking]
        for round_ in range(1, self.max_rounds + 1):
            verdicts = {o: check_choice(name, o, evidence.genres, evidence.title, evidence.year) for o, _ in ranking}
            if round_ == 1:
                result.top_status[name] = verdicts[ranking[0][0]].status
            result.trace.append(f"reasoner: {name} round {round_}: "
                                + ", ".join(f"{o} {p:.2f}" for o, p in ranking[:3]))
            for option, _ in ranking[:k]:  # what the model would have picked, vetoed by the rules
                if verdicts[option].status == CONTRADICTED and option not in rejected:
                    rejected[option] = verdicts[option].reason
                    result.rejections.append({"field": name, "option": option, "reason": rejected[option],
                                              "round": str(round_)})
                    result.trace.append(f"verifier: reject {name}={option!r}: {rejected[option]}")
            ordered = [o for o, _ in ranking if verdicts[o].status == SUPPORTED]
            ordered += [o for o, _ in ranking if verdicts[o].status == UNDECIDED]
            sent_back = False
            for option in ordered:
                if len(accepted) >= k:
                    break
                if option in accepted or option in rejected:
                    continue
                verdict = verdicts[option]
                if verdict.status == UNDECIDED and self.llm_verifier:
                    verdict = self.verify_choice(evidence, name, option, result)
                if verdict.status == CONTRADICTED:
                    rejected[option] = verdict.reason
                    result.rejections.append({"field": name, "option": option, "reason": verdict.reason,
                                              "round": str(round_)})
                    result.trace.append(f"verifier: reject {name}={option!r}: {verdict.reason}")
                    sent_back = True
                    if self.reask:
                        break
                    continue
                accepted.append(option)
                result.trace.append(f"verifier: accept {name}={option!r} ({verdict.status}"
                                    f"{': ' + verdict.reason if verdict.reason else ''})")
            if len(accepted) >= k or not (sent_back and self.reask):
                break
            ranking = self.rank_options(evidence, name, options, rejected, result)
        if not accepted:  # every candidate rejected: fall back to what the rules support
            fallback = [o for o in options if check_choice(name, o, evidence.genres, evidence.title,
                                                          evidence.year).status == SUPPORTED][:k]
            accepted = fallback or [options[-1] if name == "audience" else options[0]]
            result.trace.append(f"verifier: {name}: rounds exhausted; rule fallback {accepted}")
        return accepted

    def decide_tagline(self, evidence: Evidence, result: ItemResult, rounds: int = 2) -> str | None:
        """Schema-constrained JSON (validated, repaired, retried), then rules (and optionally the model verifier);
        a rejected tagline goes back once with the reason."""
        messages = self._messages(self.prompts.tagline.format(evidence=evidence.text()))
        for round_ in range(1, rounds + 1):
            outcome = complete_json(self.backend, messages, Judgement, JUDGEMENT_JSON_SCHEMA, max_attempts=2,
                                    max_tokens=32, seed=round_)
            result.llm_calls += len(outcome.raw)
            result.completion_tokens += outcome.completion_tokens
            result.prompt_tokens += outcome.prompt_tokens
            result.seconds += outcome.seconds
            if outcome.repaired or outcome.attempts > 1:
                result.repaired = True
                result.trace.append(f"reasoner: tagline JSON repaired={outcome.repaired}, attempts={outcome.attempts}")
            if not outcome.ok:
                result.failures.append({"item_id": evidence.item_id, "stage": "tagline-json",
                                        "error": "; ".join(outcome.errors), "raw": " | ".join(outcome.raw)[:500]})
                result.trace.append(f"reasoner: tagline failed: {'; '.join(outcome.errors)}")
                return None
            tagline = " ".join(outcome.value.tagline.split())
            verdict = check_tagline(tagline, evidence.genres, evidence.title)
            if verdict.status == UNDECIDED and self.llm_verifier:
                p_yes = self.llm_verify(evidence, f"This film is about: {tagline}", result)
                verdict = Verdict(SUPPORTED if p_yes >= self.verify_threshold else CONTRADICTED,
                                  f"model verifier: P(yes)={p_yes:.2f}")
            if verdict.status != CONTRADICTED:
                result.trace.append(f"verifier: accept tagline {tagline!r} ({verdict.status}"
                                    f"{': ' + verdict.reason if verdict.reason else ''})")
                return tagline
            result.rejections.append({"field": "tagline", "option": tagline, "reason": verdict.reason,
                                      "round": str(round_)})
            result.trace.append(f"verifier: reject tagline {tagline!r}: {verdict.reason}")
            messages = [*messages, {"role": "assistant", "content": outcome.raw[-1][:200]},
                        {"role": "user", "content": f"Rejected: {verdict.reason}. Describe the story instead, "
                                                    "as JSON with the key \"tagline\"."}]
        return None

    # ------------------------------------------------------------------ the record

    def run(self, evidence: Evidence, with_tagline: bool = True) -> ItemResult:
        """Extractor output in, validated knowledge record out (or a recorded failure)."""
        result = ItemResult(evidence.item_id, None)
        result.trace.append(f"extractor: {len(evidence.facts)} facts, {len(evidence.trusted())} trusted: "
                            + "; ".join(f.text for f in evidence.trusted()))
        try:
            first = self.first_rankings(evidence, result)
            decided = {name: self.decide_field(evidence, name, result, first[name]) for name in FIELDS}
            tagline = self.decide_tagline(evidence, result) if with_tagline else None
        except BackendError as error:
            result.failures.append({"item_id": evidence.item_id, "stage": "backend", "error": str(error)})
            result.trace.append(f"failed: {error}")
            return result
        record = assemble_record(evidence, decided, tagline, result.trace)
        try:
            result.record = KnowledgeRecord.model_validate(record).model_dump()
        except ValueError as error:
            result.failures.append({"item_id": evidence.item_id, "stage": "schema", "error": str(error)[:500]})
            result.trace.append(f"failed: schema: {error}")
            return result
        result.repaired = result.repaired or bool(result.rejections)
        result.verified = not result.rejections and not result.repaired
        return result


def derived_intents(evidence: Evidence, decided: dict[str, list[str]]) -> list[str]:
    """3-8 atomic intents from genres, era and the verified judgements (shared phrases across items)."""
    genres = evidence.genres or ["Drama"]
    primary = NOUN.get(genres[0], "film")
    decade = decade_of(evidence.year)
    intents = [f"{decided['moods'][0]} {primary}"]
    if len(genres) > 1 and genres[1] in NOUN:
        intents.append(f"{ADJECTIVE[genres[0]]} {NOUN[genres[1]]}")
    if decade:
        intents.append(f"{decade} {primary}")
    intents.append(decided["occasions"][0])
    intents.append(f"movie for {decided['audience'][0]}")
    for genre in genres[2:]:
        if genre in NOUN:
            intents.append(NOUN[genre])
    return list(dict.fromkeys(intents))[:8]


def assemble_record(evidence: Evidence, decided: dict[str, list[str]], tagline: str | None,
                    trace: list[str]) -> dict[str, Any]:
    """Code writes what the evidence says; the model's verified fields slot in. Returns a dict to validate."""
    genres = evidence.genres or ["unknown"]
    by_breadth = sorted(genres, key=lambda g: (g not in ("Drama", "Comedy", "Action"), genres.index(g)))
    category = ["film", *(g.lower() for g in by_breadth[:3])]
    decade = decade_of(evidence.year)
    attributes = [f"released {evidence.year}"] if evidence.year else []
    attributes += [f"{decade} film"] if decade else []
    attributes += [f"genre: {g.lower()}" for g in genres[:4]]
    used = [f.id for f in evidence.facts if f.kind in ("title", "year", "genres")]
    complements, complement_items = [], []
    for fact in evidence.trusted():
        if fact.kind in ("sequel", "prequel", "director") and fact.items:
            complements.append({"sequel": "its sequel", "prequel": "its prequel",
                                "director": "films by the same director"}[fact.kind])
            complement_items.extend(fact.items)
            used.append(fact.id)
    primary = NOUN.get(genres[0], "film")
    substitutes = [f"other {decade} {plural(primary)}" if decade else f"other {plural(primary)}"]
    if len(genres) > 1 and genres[1] in NOUN:
        substitutes.append(f"{ADJECTIVE.get(genres[0], '')} {plural(NOUN[genres[1]])}".strip())
    genres_id = next((f.id for f in evidence.facts if f.kind == "genres"), "E1")
    rationale = (f"Genres {', '.join(genres)} ({genres_id}) and "
                 f"{evidence.year or 'unknown year'}: audience {', '.join(decided['audience'])}; mood "
                 f"{', '.join(decided['moods'])}; occasion {', '.join(decided['occasions'])}; each checked against "
                 f"the genres ({rejected_claims(sum(1 for t in trace if t.startswith('verifier: reject')))}).")
    return {"schema_version": SCHEMA_VERSION, "item_id": evidence.item_id, "category_path": category,
            "attributes": attributes[:8], "audience": decided["audience"], "moods": decided["moods"],
            "occasions": decided["occasions"], "complements": list(dict.fromkeys(complements))[:4],
            "complement_items": list(dict.fromkeys(complement_items))[:8], "substitutes": substitutes[:4],
            "tagline": tagline, "intents": derived_intents(evidence, decided), "rationale": rationale[:600],
            "evidence_ids": list(dict.fromkeys(used))}
