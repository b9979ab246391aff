"""The names embedmig defines, and what each may hold: aliases, revision ids, document keys.

Aliases and revision ids become path components of index files, so they cannot leave the index
folder; document keys are printed one per line, so they hold no control character.
"""

from __future__ import annotations

import re
import unicodedata

from embedmig.errors import ScriptError, SourceError, StoreError

MAX_KEY_CHARS = 512
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REVISION_ID = re.compile(r"^[0-9a-zA-Z_]{1,32}$")


def blank(text: str) -> bool:
    """Whether ``text`` has nothing a model could read: only white space and invisible format
    characters (zero-width space and joiners, byte-order marks, soft hyphens). A model given
    nothing returns a zero vector, which no normalization makes a direction."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc") for ch in text)


def safe_component(value: str, what: str) -> str:
    """``value`` if it can be one path component inside the index folder, else a StoreError."""
    if not isinstance(value, str) or not _COMPONENT.match(value) or ".." in value:
        raise StoreError(
            f"{what} {value!r} must be 1-64 letters, digits, '_', '-' or '.', "
            "start with a letter or digit and contain no '..'"
        )
    return value


def check_alias(alias: str, what: str = "alias") -> str:
    return safe_component(alias, what)


def check_revision_id(rev_id: str) -> str:
    """A new revision's id: it names a file in ``versions/`` and a path component."""
    if not isinstance(rev_id, str) or not _REVISION_ID.match(rev_id):
        raise ScriptError(f"revision id {rev_id!r} must be 1-32 letters, digits or '_'")
    return rev_id


def check_key(key: object) -> str:
    """A document key: 1-512 characters, none of them a control character (a tab or a newline
    would break every line-oriented output, `embedmig search`'s included)."""
    if (
        not isinstance(key, str)
        or not key
        or len(key) > MAX_KEY_CHARS
        or (not key.isprintable() and any(unicodedata.category(c) == "Cc" for c in key))
    ):
        raise SourceError(
            f"document key {str(key)[:40]!r} must be a string of 1-{MAX_KEY_CHARS} characters "
            "without control characters (tab, newline, ...)"
        )
    return key
