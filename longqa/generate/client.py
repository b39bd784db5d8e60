"""Chat completions through the `openai` async client, counted.

The `openai` client is the reference client of the chat-completions API that vLLM, llama.cpp's server, SGLang, TGI
and Ollama all serve; it already retries timeouts, connection errors, 408/409/429 and 5xx replies with exponential
backoff and jitter (0.5 s doubling up to 8 s) and honours `Retry-After`/`retry-after-ms`, so this module only adds
counts: every HTTP attempt and its status (event hooks of its `httpx2` client), tokens in and out from `usage`.

Errors come out as two kinds: `Unreachable` (no server, a wrong key, an unknown model: nothing else can succeed, the
run stops) and `RequestFailed` (this request failed after its retries: the slot stays open for a rerun).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import openai

from schemas.generate import GenerateConfig


class Unreachable(Exception):
    """The server cannot serve any request as configured (connection refused, 401/403, unknown model)."""


class RequestFailed(Exception):
    """One request failed after all its retries (timeouts, 429, 5xx, another 4xx); `reason` is a short code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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
    """`await chat(...)` -> `Reply`; counts in `stats`. The API key is read from `cfg.api_key_env` and only ever
    handed to the `openai` client."""

    def __init__(self, cfg: GenerateConfig):
        self.cfg, self.stats = cfg, RequestStats()
        http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._on_request],
                                                           "response": [self._on_response]})
        self._client = openai.AsyncOpenAI(base_url=cfg.endpoint, api_key=os.environ.get(cfg.api_key_env) or "none",
                                          max_retries=cfg.max_retries, timeout=cfg.timeout, http_client=http)

    async def _on_request(self, request) -> None:
        self.stats.attempts += 1

    async def _on_response(self, response) -> None:
        self.stats.statuses[response.status_code] += 1

    async def close(self) -> None:
        await self._client.close()

    async def chat(self, messages: list[dict], *, max_tokens: int, temperature: float,
                   response_format: dict | None, seed: int | None = None) -> Reply:
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if response_format is not None:
            body["response_format"] = response_format
        if seed is not None:
            body["seed"] = seed
        self.stats.calls += 1
        try:
            completion = await self._client.chat.completions.create(**body)
        except openai.APITimeoutError as e:
            raise RequestFailed("timeout", f"no reply within {self.cfg.timeout:g} s after "
                                f"{self.cfg.max_retries} retries") from e
        except openai.APIConnectionError as e:
            raise Unreachable(f"cannot reach {self.cfg.endpoint} ({e.__cause__ or e}); is the server running?") from e
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise Unreachable(f"{self.cfg.endpoint} refused the key from ${self.cfg.api_key_env} "
                              f"(HTTP {e.status_code}); set that variable to a valid key") from e
        except openai.NotFoundError as e:
            raise Unreachable(f"{self.cfg.endpoint}: HTTP 404 for model '{self.cfg.model}' ({_clip(e.message)}); "
                              "check --endpoint (it ends in /v1) and --model") from e
        except openai.APIStatusError as e:
            raise RequestFailed(f"http_{e.status_code}", _clip(e.message)) from e
        except (openai.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MalformedReply(f"the server's reply is not a chat completion: {_clip(str(e))}") from e
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


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
