"""Make API keys for the service: `python -m serving.keys new NAME --scopes translate,feedback [--file PATH]`.

`new` prints a fresh random key once (the server never stores it) and the client's entry, the key's sha256
with the name and scopes, for serving.api_keys_file or BHASHAFLOW_API_KEYS; with --file the entry is added
to that file (rewritten as YAML). `hash` prints the sha256 of a key read from stdin, for keys made elsewhere.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from bhashaflow.config import ConfigError
from serving.auth import SCOPES, ApiClientEntry, check_unique, hash_key, parse_entries

KEY_PREFIX = "bf_"  # lets secret scanners and people tell a bhashaflow key when they see one


def new_key() -> str:
    """A random key: 32 bytes from `secrets`, URL-safe base64, behind KEY_PREFIX."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _entry_line(entry: ApiClientEntry) -> str:
    return "- " + yaml.safe_dump(entry.model_dump(), default_flow_style=True, sort_keys=False).strip()


def add_to_file(path: Path, entry: ApiClientEntry) -> None:
    """Add `entry` to the keys file at `path` (created if missing), refusing a name or key it already has."""
    entries = parse_entries(path.read_text(encoding="utf-8"), str(path)) if path.exists() else []
    check_unique([*entries, entry], None)
    text = "# API clients of the bhashaflow service: name, scopes and the sha256 of the key (never the key).\n"
    text += "".join(_entry_line(e) + "\n" for e in [*entries, entry])
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def cmd_new(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    key = new_key()
    entry = ApiClientEntry.model_validate({"name": args.name, "scopes": scopes, "sha256": hash_key(key)})
    out = [f"# the key of client {entry.name!r}; it is shown only now (the server keeps its sha256):", key]
    if args.file:
        add_to_file(Path(args.file), entry)
        out.append(f"# its entry was added to {args.file}")
    else:
        out += ["# its entry for serving.api_keys_file (or BHASHAFLOW_API_KEYS):", _entry_line(entry)]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    key = getpass.getpass("key: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not key.strip():
        raise ConfigError("no key given")
    sys.stdout.write(hash_key(key) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="make a key and its entry")
    new.add_argument("name", help="the client's name, recorded with its episodes and feedback")
    new.add_argument("--scopes", default="translate,feedback", help=f"comma-separated, of {', '.join(SCOPES)}")
    new.add_argument("--file", default=None, help="add the entry to this keys file (serving.api_keys_file)")
    new.set_defaults(func=cmd_new)
    sub.add_parser("hash", help="the sha256 of a key read from stdin").set_defaults(func=cmd_hash)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ValidationError as exc:  # a bad name or scope: say which, not the value
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        sys.stderr.write(f"serving.keys {args.command}: error: {problems}\n")
    except (ConfigError, OSError) as exc:
        sys.stderr.write(f"serving.keys {args.command}: error: {' '.join(str(exc).split())}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
