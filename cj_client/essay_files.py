"""Reading the essays of a run: a directory of `.txt` files or a JSONL file, checked line by line.

Every mistake is an InputError naming the file (and line or essay id) at fault, so that a command
can print one line instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from cj_client.errors import InputError
from cj_client.models import EssayInput

_NOT_UNICODE = (
    "holds a lone surrogate (an escape such as \\ud83d without its pair), which is not text"
)
_NOT_JSONL_HINT = (
    ' (a JSONL file holds one {"id", "text"} object per line; for .txt essays give their directory)'
)


def load_essays(path: Path) -> list[EssayInput]:
    """Essays from a directory of `.txt` files (id = file stem) or a JSONL file of {id, text}.

    Raises:
        InputError: the path is missing or unreadable, a file is not UTF-8 text, a JSONL line is
            not {"id", "text"}, an id or text is not Unicode text (a lone surrogate, a file name
            that is not UTF-8), an essay is empty, an id repeats, or there are fewer than two.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    essays = _from_directory(path) if path.is_dir() else _from_jsonl(path)
    if len(essays) < 2:
        found = "no essays" if not essays else "only one essay"
        raise InputError(f"{path}: a ranking needs at least two essays, found {found}")
    return essays


def _from_directory(path: Path) -> list[EssayInput]:
    try:
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
    except OSError as exc:
        raise InputError(f"{path}: cannot list the directory: {exc.strerror}") from None
    if not files:
        raise InputError(f"{path}: no .txt essays in this directory")
    for file in files:
        # A name from a system whose names are not UTF-8 (Latin-1 in an old archive) arrives
        # with surrogate escapes, which no request can carry.
        if not _is_unicode(file.name):
            raise InputError(f"{path}: the file name {file.name!r} is not UTF-8; rename it")
    return [
        EssayInput(id=file.stem, text=_essay_text(file, _read_text(file), file)) for file in files
    ]


def _from_jsonl(path: Path) -> list[EssayInput]:
    text = _read_text(path)
    essays: list[EssayInput] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "" if essays else _NOT_JSONL_HINT
            raise InputError(f"{where}: not JSON: {exc.msg}{hint}") from None
        if not isinstance(row, dict) or "id" not in row or "text" not in row:
            raise InputError(f'{where}: expected {{id, text}}: an object with "id" and "text"')
        essay_id, body = row["id"], row["text"]
        if not isinstance(essay_id, str | int) or isinstance(essay_id, bool) or not str(essay_id):
            raise InputError(f'{where}: "id" must be a non-empty string')
        if not isinstance(body, str):
            raise InputError(f'{where}: "text" of essay {essay_id!r} must be a string')
        essay_id = str(essay_id)
        if not _is_unicode(essay_id):
            raise InputError(f'{where}: "id" {essay_id!r} {_NOT_UNICODE}')
        if not _is_unicode(body):
            raise InputError(f'{where}: "text" of essay {essay_id!r} {_NOT_UNICODE}')
        if essay_id in first_line:
            first = first_line[essay_id]
            raise InputError(
                f"{where}: essay id {essay_id!r} appears twice (first on line {first})"
            )
        first_line[essay_id] = number
        essays.append(EssayInput(id=essay_id, text=_essay_text(path, body, where)))
    return essays


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if b"\0" in data:
        raise InputError(f"{path}: a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _is_unicode(text: str) -> bool:
    """False when `text` holds a lone surrogate, which UTF-8 cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _essay_text(path: Path, text: str, where: object) -> str:
    if not text.strip():
        raise InputError(f"{where}: the essay is empty")
    return text
