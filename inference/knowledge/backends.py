"""LLM backends behind one interface, and JSON output that is validated, repaired or retried.

- `OpenAIChatBackend`: the OpenAI-compatible chat API that `vllm serve`, Ray Serve LLM and llama.cpp's
  server expose (the production path): bounded concurrency, per-call timeout, retries with backoff on
  timeouts, connection errors, 429 and 5xx; 4xx other than 429 fail at once.
- `VLLMOfflineBackend`: vllm's offline engine where vllm is installed (imported lazily).

`complete_json` asks for JSON, parses, repairs (code fences, prose around the object, trailing commas,
single quotes, a truncated tail), validates against a pydantic model and retries with the validation
error; what still fails comes back as a failed `JsonOutcome` with every attempt's raw text, so the
caller records it: nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion: messages, sampling and optional JSON schema / top log-probabilities."""

    messages: list[dict[str, str]]  # empty when `prompt` is set
    max_tokens: int = 64
    temperature: float = 0.0
    json_schema: dict[str, Any] | None = None
    top_logprobs: int | None = None
    seed: int = 0
    prompt: str | None = None  # a raw completion (/completions) instead of a chat (/chat/completions)


@dataclass
class ChatResult:
    """The completion text, per generated token the top alternatives {token: logprob}, usage and time."""

    text: str
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = ""


class BackendError(RuntimeError):
    """A call failed after its retries; `kind` is timeout, connection, http, malformed, or unrecorded (a replay
    with no model lacks the answer, answers.py)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class LLMBackend(Protocol):
    """What the agents need from a model server."""

    model: str

    def chat(self, request: ChatRequest) -> ChatResult: ...


@dataclass
class BackendStats:
    """Counters a build reports: calls, retries, failures, tokens, seconds."""

    calls: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: ChatResult) -> None:
        with self.lock:
            self.calls += 1
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
            self.seconds += result.seconds

    def to_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "retries": self.retries, "failures": self.failures,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "seconds": round(self.seconds, 2)}


_calls_lock = threading.Lock()
_calls_made = 0


def llm_calls_made() -> int:
    """LLM requests this process has sent through any backend, failed ones included.

    The streaming job exports it as `reaseq_llm_calls` (it must stay 0: online serving uses
    precomputed knowledge only), so a call wired into the hot path shows up wherever it comes from.
    """
    return _calls_made


def _count_llm_call() -> None:
    global _calls_made
    with _calls_lock:
        _calls_made += 1


class OpenAIChatBackend:
    """POST {base_url}/chat/completions with bounded concurrency, timeouts and retries."""

    def __init__(self, base_url: str, model: str, timeout_s: float = 60.0, max_retries: int = 2,
                 backoff_s: float = 0.5, max_concurrency: int = 1, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.api_key = api_key
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.stats = BackendStats()

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens,
                                "temperature": request.temperature, "seed": request.seed}
        if request.prompt is not None:
            body["prompt"] = request.prompt
            if request.top_logprobs:
                body["logprobs"] = request.top_logprobs
            return body
        body["messages"] = request.messages
        if request.json_schema is not None:
            body["response_format"] = {"type": "json_object", "schema": request.json_schema}
        if request.top_logprobs:
            body.update(logprobs=True, top_logprobs=request.top_logprobs)
        return body

    def chat(self, request: ChatRequest) -> ChatResult:
        data = json.dumps(self.payload(request)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: BackendError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self.stats.lock:
                    self.stats.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with self.slots:
                    started = time.monotonic()
                    route = "completions" if request.prompt is not None else "chat/completions"
                    http = urllib.request.Request(f"{self.base_url}/{route}", data=data, headers=headers)
                    _count_llm_call()
                    with urllib.request.urlopen(http, timeout=self.timeout_s) as response:
                        raw = response.read()
                    seconds = time.monotonic() - started
                result = parse_chat_response(raw, seconds)
                self.stats.add(result)
                return result
            except urllib.error.HTTPError as error:
                last = BackendError("http", f"HTTP {error.code} from {self.base_url}")
                if error.code != 429 and error.code < 500:
                    break
            except (TimeoutError, OSError) as error:  # socket timeouts and refused/reset connections
                timeout = isinstance(error, TimeoutError) or "timed out" in str(error)
                last = BackendError("timeout" if timeout else "connection", f"{error} ({self.base_url})")
            except BackendError as error:
                last = error
        with self.stats.lock:
            self.stats.failures += 1
        assert last is not None
        raise last


def parse_chat_response(raw: bytes, seconds: float) -> ChatResult:
    """ChatResult from an OpenAI chat completion body; BackendError('malformed') if it is not one."""
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        text = choice["message"].get("content") or "" if "message" in choice else choice["text"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        raise BackendError("malformed", f"not a chat completion ({error}): {raw[:200]!r}") from error
    tops: list[dict[str, float]] = []
    legacy = (choice.get("logprobs") or {}).get("top_logprobs")
    if legacy:  # /completions: a list of {token: logprob} per generated token
        tops = [{str(k): float(v) for k, v in (step or {}).items()} for step in legacy]
    for token in ((choice.get("logprobs") or {}).get("content") or []):
        alternatives = token.get("top_logprobs") or [{"token": token.get("token"), "logprob": token.get("logprob")}]
        tops.append({a["token"]: float(a["logprob"]) for a in alternatives if a.get("token") is not None})
    usage = body.get("usage") or {}
    return ChatResult(text, tops, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                      seconds, str(choice.get("finish_reason") or ""))


class VLLMOfflineBackend:
    """vllm's offline engine (`vllm.LLM`), for GPU batch builds where vllm is installed."""

    def __init__(self, model: str, **engine_args: Any) -> None:
        try:
            from vllm import LLM
        except ImportError as error:
            raise BackendError("connection", "vllm is not installed; use the OpenAI-compatible backend "
                                             "(`vllm serve` or llama.cpp's server)") from error
        self.model = model
        self.engine = LLM(model=model, **engine_args)
        self.stats = BackendStats()

    def chat(self, request: ChatRequest) -> ChatResult:
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if request.json_schema is not None:
            from vllm.sampling_params import GuidedDecodingParams

            extra["guided_decoding"] = GuidedDecodingParams(json=request.json_schema)
        params = SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed,
                                logprobs=request.top_logprobs, **extra)
        started = time.monotonic()
        _count_llm_call()
        if request.prompt is not None:
            output = self.engine.generate([request.prompt], params, use_tqdm=False)[0]
        else:
            output = self.engine.chat(request.messages, params, use_tqdm=False)[0]
        completion = output.outputs[0]
        tops = [{lp.decoded_token: lp.logprob for lp in step.values()} for step in (completion.logprobs or [])]
        result = ChatResult(completion.text, tops, len(output.prompt_token_ids), len(completion.token_ids),
                            time.monotonic() - started, str(completion.finish_reason or ""))
        self.stats.add(result)
        return result


# ---------------------------------------------------------------- JSON: validate, repair, retry


@dataclass
class JsonOutcome:
    """The validated object (None on failure), how many attempts, whether a repair was needed, every error."""

    value: BaseModel | None
    attempts: int
    repaired: bool
    errors: list[str]
    raw: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.value is not None


def repair_json(text: str) -> str | None:
    """Best-effort repair of almost-JSON from a small model; None when there is no object to repair."""
    text = re.sub(r"```(?:json)?", "", text).strip()
    start = text.find("{")
    if start < 0:
        return None
    text = text[start:]
    end = text.rfind("}")
    candidate = text[: end + 1] if end >= 0 else text
    if '"' not in candidate and "'" in candidate:
        candidate = candidate.replace("'", '"')
    candidate = re.sub(r",\s*([}\]])", r"\1", candidate)
    if _loads(candidate) is None:  # truncated: close an open string and the open brackets
        closed = candidate + ('"' if candidate.count('"') % 2 else "")
        stack = []
        for char in re.sub(r'"(?:[^"\\]|\\.)*"', "", closed):
            if char in "{[":
                stack.append("}" if char == "{" else "]")
            elif char in "}]" and stack:
                stack.pop()
        candidate = re.sub(r",\s*$", "", closed) + "".join(reversed(stack))
    return candidate if _loads(candidate) is not None else None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_json_as(text: str, model: type[BaseModel]) -> tuple[BaseModel | None, bool, str]:
    """(validated object or None, repaired?, error) for one raw completion."""
    repaired = False
    payload = _loads(text)
    if payload is None:
        fixed = repair_json(text)
        if fixed is None:
            return None, False, f"not JSON: {text[:80]!r}"
        payload, repaired = json.loads(fixed), True
    try:
        return model.model_validate(payload), repaired, ""
    except ValidationError as error:
        first = error.errors()[0]
        return None, repaired, f"schema: {'.'.join(map(str, first['loc']))}: {first['msg']}"


def complete_json(backend: LLMBackend, messages: list[dict[str, str]], model: type[BaseModel],
                  json_schema: dict[str, Any] | None = None, max_attempts: int = 3, max_tokens: int = 64,
                  seed: int = 0) -> JsonOutcome:
    """Ask for JSON matching `model`; repair, then retry with the error appended; never raise on bad output."""
    errors: list[str] = []
    raws: list[str] = []
    repaired_any = False
    history = list(messages)
    usage = [0, 0, 0.0]
    for attempt in range(1, max_attempts + 1):
        try:
            result = backend.chat(ChatRequest(history, max_tokens=max_tokens, json_schema=json_schema,
                                              seed=seed + attempt - 1, temperature=0.0 if attempt == 1 else 0.7))
        except BackendError as error:
            errors.append(str(error))
            raws.append("")
            continue
        raws.append(result.text)
        usage = [usage[0] + result.prompt_tokens, usage[1] + result.completion_tokens, usage[2] + result.seconds]
        value, repaired, error = parse_json_as(result.text, model)
        repaired_any = repaired_any or repaired
        if value is not None:
            return JsonOutcome(value, attempt, repaired_any, errors, raws, *usage)
        errors.append(error)
        history = [*messages, {"role": "assistant", "content": result.text[:300]},
                   {"role": "user", "content": f"That was invalid ({error}). Reply with the JSON object only."}]
    return JsonOutcome(None, max_attempts, repaired_any, errors, raws, *usage)
