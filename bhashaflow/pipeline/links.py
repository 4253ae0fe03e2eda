"""Where a run's files and the registry's versions are, written as markdown a person on the Prefect UI can act on.

A browser on the UI's http page will not open a `file://` link (and Prefect's newer UI drops such targets), so a
local path is text naming the host and the command that opens it. A file on S3 gets a presigned link when the
credentials can sign one (a folder: one link per file), else its `s3://` URL as text with the `aws s3` command
that reads it. An http(s) URL is a link.
"""

from __future__ import annotations

import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from bhashaflow.core.fsio import is_local, open_fs
from bhashaflow.core.settings import Settings

MAX_FOLDER_LINKS = 12  # a registry version holds a handful of files; a bigger folder gets its first ones and a count


def _code(text: str) -> str:
    return f"`{text}`"


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


@dataclass(frozen=True)
class Locator:
    """Renders locations for artifacts with one settings object (credentials, endpoint, link lifetime).

    Args:
        settings: credentials and endpoint for s3:// URLs, and `artifact_link_ttl_s` (0: never sign).
        host: the machine whose disk a local path is on (this one by default: the worker that wrote it).
    """

    settings: Settings
    host: str = field(default_factory=socket.gethostname)

    def file(self, uri: str) -> str:
        """One file: a link where a browser can follow one, else its location and the command that opens it."""
        if uri.startswith(("http://", "https://")):
            return f"[{_name(uri)}]({uri})"
        local = self.local_path(uri)
        if local is not None:
            return f"{_code(local)} on host {_code(self.host)} (open: {_code('xdg-open ' + shlex.quote(local))})"
        signed = self.presigned(uri)
        if signed is not None:
            return f"[{_name(uri)}]({signed}) ({self._valid_for()}; {_code(uri)})"
        return self._command(uri, "cp", uri.replace("s3a://", "s3://"), ".")

    def folder(self, uri: str) -> str:
        """A folder: on S3 one presigned link per file (when signing works); else where it is and how to open it."""
        if uri.startswith(("http://", "https://")):
            return f"[{_name(uri)}]({uri})"
        local = self.local_path(uri)
        if local is not None:
            return f"{_code(local)} on host {_code(self.host)} (open: {_code('ls -l ' + shlex.quote(local))})"
        where = self._command(uri, "cp", "--recursive", uri.replace("s3a://", "s3://").rstrip("/") + "/", _name(uri))
        links = self._signed_files(uri)
        return f"{where}; files, {self._valid_for()}: {links}" if links else where

    def presigned(self, uri: str) -> str | None:
        """A presigned GET URL of an object-store file, or None (local, signing off, or no credentials to sign)."""
        if self.settings.artifact_link_ttl_s == 0:
            return None
        fs, path = open_fs(uri, self.settings.storage_options_for(uri))
        if is_local(fs):
            return None
        try:
            return str(fs.sign(path, expiration=self.settings.artifact_link_ttl_s))
        # A store without signing (NotImplementedError) or credentials that cannot sign (botocore's
        # NoCredentialsError, not importable here): the location is still given, as text.
        except Exception:  # noqa: BLE001 - any failure to sign degrades to the text form
            return None

    def _signed_files(self, uri: str) -> str:
        if self.settings.artifact_link_ttl_s == 0:
            return ""
        fs, path = open_fs(uri, self.settings.storage_options_for(uri))
        files = sorted(fs.find(path))
        links = []
        for file in files[:MAX_FOLDER_LINKS]:
            signed = self.presigned(f"{uri.rstrip('/')}/{file[len(path.rstrip('/')) + 1 :]}")
            if signed is None:
                return ""
            links.append(f"[{file[len(path.rstrip('/')) + 1 :]}]({signed})")
        more = f" and {len(files) - MAX_FOLDER_LINKS} more" if len(files) > MAX_FOLDER_LINKS else ""
        return " · ".join(links) + more

    def local_path(self, uri: str) -> str | None:
        """The absolute path of a local `uri` (this machine's disk), else None."""
        protocol, path = fsspec.core.split_protocol(uri)
        return str(Path(path).expanduser().resolve()) if protocol in (None, "file", "local") else None

    def _valid_for(self) -> str:
        ttl = self.settings.artifact_link_ttl_s
        for unit, seconds in (("days", 86400), ("h", 3600), ("min", 60)):
            if ttl % seconds == 0:
                return f"links valid {ttl // seconds} {unit}"
        return f"links valid {ttl} s"

    def _command(self, uri: str, *args: str) -> str:
        """The `aws s3` command that reads an s3:// location (`args` around it), else the location itself."""
        if not uri.startswith(("s3://", "s3a://")):
            return _code(uri)
        endpoint = self.settings.aws_endpoint_url
        command = ["aws", "s3", *args] + (["--endpoint-url", endpoint] if endpoint else [])
        return f"{_code(uri)} ({_code(shlex.join(command))})"
