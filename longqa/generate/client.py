"""Chat completions through the `openai` async client, counted.

The `openai` client is the reference client of the chat-completions API that vLLM, llama.cpp's server, SGLang, TGI
and Ollama all serve; it already retries timeouts, connection errors, 408/409/429 and 5xx replies with exponential
backoff and jitter (0.5 s doubling up to 8 s) and honours `Retry-After`/`retry-after-ms`, so this module only adds
counts: every HTTP attempt and its status (event hooks of its `httpx2` client), tokens in and out from `usage`.

Errors come out as two kinds: `Unreachable` (no server, a wrong key, an unknown model or path: nothing else can
succeed, the run stops) and `RequestFailed` (this request failed, after its retries or refused by a 4xx that is not
retried: the slot stays open for a rerun). A server that refuses `response_format: json_schema` with HTTP 400 (some
TGI and llama.cpp builds) is asked again once with `json_object`; when that is accepted the run goes on in
`json_object` mode, said once in the log and recorded in the run's summary (`json_mode`).

No key (the variable named by `api_key_env` unset or empty): no `Authorization` header is sent at all.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import openai

from longqa.generate.prompts import response_format
from schemas.generate import GenerateConfig

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """The server cannot serve any request as configured (connection refused, 401/403, unknown model)."""


#: The statuses the `openai` client retries (with 408 and 409); any other 4xx is answered once and not retried.
RETRIED_STATUSES = frozenset({408, 409, 429})


#: HTTP 400 to this many requests before any was answered stops the run (every slot would be refused alike).
REFUSED_BEFORE_STOP = 3


class RequestFailed(Exception):
    """One request failed: after all its retries (timeouts, 429, 5xx), or refused by a 4xx that is not retried
    (`retried` False); `reason` is a short code."""

    def __init__(self, reason: str, message: str, retried: bool = True):
        super().__init__(message)
        self.reason, self.retried = reason, retried


class MalformedReply(Exception):
    """The server answered 200 with a body that is not a chat completion."""


@dataclass
class Reply:
    text: str | None
    finish_reason: str | None


@dataclass
class RequestStats:
    """What went over the wire: `attempts` counts retries too; `statuses` the HTTP status of each reply."""

    calls: int = 0
    attempts: int = 0
    statuses: Counter = field(default_factory=Counter)
    tokens_in: int = 0
    tokens_out: int = 0
    without_usage: int = 0

    def as_dict(self) -> dict:
        return {"calls": self.calls, "http_attempts": self.attempts,
                "no_reply": self.attempts - sum(self.statuses.values()),  # timeouts and connection errors
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "replies_without_usage": self.without_usage}


class ChatClient:
    """`await chat(...)` -> `Reply`; counts in `stats` (`on_change()` is called when a request goes out and when a
    chat call ends). The API key is read from `cfg.api_key_env` and only ever handed to the `openai` client."""

    def __init__(self, cfg: GenerateConfig, on_change=None):
        self.cfg, self.stats, self.on_change = cfg, RequestStats(), on_change
        self.json_mode = cfg.json_mode  # json_object after a server refused json_schema
        self.answered = self.refused = 0  # completions received; 400s before the first of them
        key = os.environ.get(cfg.api_key_env) or None
        self._send_key = key is not None
        http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._on_request],
                                                           "response": [self._on_response]})
        # the openai client insists on a key; without one its placeholder header is taken off every request
        self._client = openai.AsyncOpenAI(base_url=cfg.endpoint, api_key=key or "unset", max_retries=cfg.max_retries,
                                          timeout=cfg.timeout, http_client=http)

    async def _on_request(self, request) -> None:
        if not self._send_key:
            request.headers.pop("Authorization", None)
        self.stats.attempts += 1
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _on_response(self, response) -> None:
        self.stats.statuses[response.status_code] += 1

    async def close(self) -> None:
        await self._client.close()

    async def chat(self, messages: list[dict], *, max_tokens: int, temperature: float,
                   schema: tuple[str, dict] | None = None, seed: int | None = None) -> Reply:
        """One chat completion; `schema` (name, JSON schema) constrains the reply as `json_mode` says."""
        try:
            return await self._chat(messages, max_tokens, temperature, schema, seed)
        finally:
            self._changed()

    async def _chat(self, messages, max_tokens, temperature, schema, seed) -> Reply:
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        mode = self.json_mode
        if schema is not None and (constraint := response_format(mode, *schema)) is not None:
            body["response_format"] = constraint
        if seed is not None:
            body["seed"] = seed
        try:
            completion = await self._create(body)
        except openai.BadRequestError as e:
            if mode != "json_schema" or "response_format" not in body:
                raise self._bad_request(e) from e
            completion = await self._without_schema(body, e)
        self.answered += 1
        if isinstance(completion, str) or not getattr(completion, "choices", None):
            raise MalformedReply(f"the server's reply is not a chat completion: {_clip(str(completion))}")
        usage = getattr(completion, "usage", None)
        if usage is None:
            self.stats.without_usage += 1
        else:
            self.stats.tokens_in += usage.prompt_tokens or 0
            self.stats.tokens_out += usage.completion_tokens or 0
        choice = completion.choices[0]
        return Reply(text=choice.message.content if choice.message else None, finish_reason=choice.finish_reason)

    async def _without_schema(self, body: dict, refused: openai.BadRequestError):
        """The request again with `json_object`: accepted, the server refused the schema and the run goes on in
        json_object mode; refused again, the 400 was about something else and is this request's failure."""
        try:
            completion = await self._create({**body, "response_format": {"type": "json_object"}})
        except openai.BadRequestError as e:
            raise self._bad_request(refused) from e
        if self.json_mode == "json_schema":
            self.json_mode = "json_object"
            log.warning("%s refused response_format json_schema (HTTP 400: %s) and accepted json_object: going on "
                        "with --json-mode json_object (the prompt still asks for the same fields; pass --json-mode "
                        "json_object or off to skip this probe)", self.cfg.endpoint, _clip(refused.message, 160))
        return completion

    def _bad_request(self, e: openai.BadRequestError) -> Exception:
        """This request's failure; or, when the first requests of the run are all refused, the run's (a request
        every slot makes alike: a rerun would be refused the same way)."""
        self.refused += 1
        if not self.answered and self.refused >= REFUSED_BEFORE_STOP:
            return Unreachable(f"{self.cfg.endpoint} refused the first {self.refused} requests with HTTP 400 "
                               f"({_clip(e.message)}); check --model, --max-question-tokens/--max-answer-tokens "
                               "against the server's context and --json-mode")
        return RequestFailed("http_400", f"refused by the server, not retried: {_clip(e.message)}", retried=False)

    async def _create(self, body: dict):
        self.stats.calls += 1
        try:
            return await self._client.chat.completions.create(**body)
        except openai.APITimeoutError as e:
            raise RequestFailed("timeout", f"no reply within {self.cfg.timeout:g} s after "
                                f"{self.cfg.max_retries} retries") from e
        except openai.APIConnectionError as e:
            raise Unreachable(f"cannot reach {self.cfg.endpoint} ({e.__cause__ or e}); is the server running?") from e
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            what = "refused the key from" if self._send_key else "wants a key: none was sent, as"
            raise Unreachable(f"{self.cfg.endpoint} {what} ${self.cfg.api_key_env} (HTTP {e.status_code}); set "
                              "that variable to a valid key") from e
        except openai.NotFoundError as e:
            raise Unreachable(not_found(self.cfg.endpoint, self.cfg.model, _clip(e.message))) from e
        except openai.BadRequestError:
            raise
        except openai.APIStatusError as e:
            retried = e.status_code in RETRIED_STATUSES or e.status_code >= 500
            how = f"after {self.cfg.max_retries} retries" if retried else "refused by the server, not retried"
            raise RequestFailed(f"http_{e.status_code}", f"{how}: {_clip(e.message)}", retried=retried) from e
        except (openai.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MalformedReply(f"the server's reply is not a chat completion: {_clip(str(e))}") from e


def not_found(endpoint: str, model: str, message: str) -> str:
    """A 404 names what is likely wrong: the path when the endpoint does not end in /v1, else the model."""
    if not endpoint.rstrip("/").endswith("/v1"):
        return (f"{endpoint}/chat/completions: HTTP 404 ({message}); the endpoint is the server's base URL up to "
                f"and including /v1, e.g. {endpoint.rstrip('/')}/v1")
    return f"{endpoint}: HTTP 404 for model '{model}' ({message}); check --model against GET {endpoint}/models"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
