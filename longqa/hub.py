"""Upload a staged folder to the Hugging Face Hub (or a mirror / private hub) in one commit.

Shared by `python -m longqa.publish` (datasets) and `python -m sft.publish` (models). The token comes from
`HF_TOKEN` or the stored login (`huggingface_hub.get_token`), is handed to the client only, and is never printed or
written; an unreachable endpoint fails within seconds, before anything is staged for upload.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from schemas.errors import UserError
from schemas.publish import HubOptions

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 5.0
TRIES = 3


class PublishError(UserError):
    """What was asked cannot be published (not a finished build or run, a staged copy that does not load back)."""


class HubError(PublishError):
    """Publishing failed at the hub; the message says why and never contains the token."""


def resolve_endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open a TCP connection to the endpoint's host, so an unreachable hub fails fast with a clear message."""
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise HubError(f"endpoint {endpoint!r} is not an http(s) URL")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise HubError(f"cannot reach the hub at {endpoint} ({e.__class__.__name__}: {e}); check --endpoint / "
                       "HF_ENDPOINT and the network") from None


OFFLINE_MESSAGE = ("the Hub client is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): publishing "
                   "needs the hub; unset them for this command (env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE python "
                   "-m …), or stage without uploading with --dry-run FOLDER")


def offline() -> bool:
    """huggingface_hub's offline mode, as the variables say now or as the library read them when imported (either
    way it would make no request)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")  # the library's own rule
    return (value or "").upper() in constants.ENV_VARS_TRUE_VALUES or constants.is_offline_mode()


def preflight(endpoint: str | None) -> tuple[str, str]:
    """(endpoint, token) once the hub is known reachable and a token exists: call before any slow staging."""
    from huggingface_hub import get_token

    if offline():
        raise HubError(OFFLINE_MESSAGE)
    endpoint = resolve_endpoint(endpoint)
    check_reachable(endpoint)
    token = get_token()
    if not token:
        raise HubError("no Hub token: set HF_TOKEN or run `hf auth login`")
    return endpoint, token


def _transient(error: Exception) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    return isinstance(error, (ConnectionError, TimeoutError, OSError))


def upload(folder: Path, repo_id: str, *, repo_type: str, private: bool = False, revision: str | None = None,
           endpoint: str | None = None, commit_message: str = "Upload with longqa") -> str:
    """Create the repo if missing and upload `folder` as one commit; returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    endpoint, token = preflight(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    for attempt in range(1, TRIES + 1):
        try:
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, revision=revision,
                              commit_message=commit_message)
            break
        except Exception as e:  # noqa: BLE001 - classified below; the message never holds the token
            if isinstance(e, OfflineModeIsEnabled):  # a ConnectionError that no retry can help
                raise HubError(OFFLINE_MESSAGE) from None
            if attempt == TRIES or not _transient(e):
                raise HubError(f"upload to {endpoint} failed: {str(e).replace(token, '***')}") from None
            log.warning("transient error (%s), retrying (%d/%d)", e.__class__.__name__, attempt, TRIES)
            time.sleep(2 ** attempt)
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{endpoint}/{prefix}{repo_id}"


def publish(cfg: HubOptions, repo_type: str, prepare: Callable[[Path], str]) -> str | None:
    """Stage (and verify) with `prepare(folder) -> commit message`, then upload unless ``cfg.dry_run``; returns the
    repo URL (None for a dry run).

    The hub is checked before any staging, so an unreachable endpoint or a missing token fails at once.
    """
    if cfg.dry_run:  # staged beside the folder and renamed into place: the output-folder rule (issue 24)
        from longqa.atomic import atomic_output
        from schemas.outdir import guard

        command = "longqa.publish" if repo_type == "dataset" else "sft.publish"
        source = getattr(cfg, "dataset_dir", None) or getattr(cfg, "source", None)
        guard(cfg.dry_run, command, inputs=(source,), overwrite=cfg.overwrite)
        with atomic_output(Path(cfg.dry_run), command) as tmp:
            prepare(tmp)
        log.info("staged and verified %s/", cfg.dry_run)
        return None
    staged = Path(tempfile.mkdtemp(prefix="longqa-publish-")) / "repo"
    try:
        preflight(cfg.endpoint)
        message = prepare(staged)
        url = upload(staged, cfg.repo_id, repo_type=repo_type, private=cfg.private, revision=cfg.revision,
                     endpoint=cfg.endpoint, commit_message=message)
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    log.info(url)
    return url
