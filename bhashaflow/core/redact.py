"""Keeping credentials out of what leaves the process: messages, logs, manifests, reports, config dumps.

A URI may carry a secret in its userinfo (`https://user:pass@host/...`) or in a query parameter
(`...?token=...`, a presigned `X-Amz-Signature`). `redact_uri` masks both; `redact_text` does it to every
URI inside a message; `RedactFilter` does it to log records of libraries that log URLs (httpx).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

MASK = "***"

# Query parameter names that carry credentials: token, access_token, api_key, apikey, key, secret, password,
# passwd, pwd, sig, signature, X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, auth, session...
_SECRET_PARAM = re.compile(r"(?i)(token|key|secret|pass|pwd|sig|auth|cred|session|cookie)")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        parts.append(f"{name}={MASK}" if eq and value and _SECRET_PARAM.search(name) else item)
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """`uri` with its userinfo and secret-looking query values masked; other strings unchanged.

    `https://u:p@h/x?token=t&lang=hi` -> `https://***@h/x?token=***&lang=hi`.
    """
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # a malformed URL (an unclosed IPv6 bracket): mask everything after the scheme
        return uri.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = _redact_query(parts.query) if parts.query else parts.query
    if netloc == parts.netloc and query == parts.query:
        return uri
    return SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment).geturl()


def redact_text(text: str) -> str:
    """`text` with every URI in it passed through `redact_uri`."""
    if "://" not in text:
        return text
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def redact_values(obj: Any) -> Any:
    """A copy of a JSON-like object (a config dump) with every string passed through `redact_text`."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_values(v) for v in obj]
    return obj


class RedactFilter(logging.Filter):
    """Rewrites a log record's message with `redact_text` (install on loggers of libraries that log URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, not ours
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_filter(*logger_names: str) -> None:
    """Add one `RedactFilter` to each named logger (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactFilter) for f in logger.filters):
            logger.addFilter(RedactFilter())
