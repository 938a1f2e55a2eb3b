"""The fenced code blocks of README.md and docs/**/*.md, with the doc-test markers before them.

A marker is an HTML comment on the line(s) just before a fence (readers of the rendered page do
not see it), e.g. ``<!-- doc-test: skip (needs a real OpenAI key) -->``. Several markers may
share one comment, separated by ``;``. A typo in a marker is an error, never a silent no-op.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHELL = frozenset({"bash", "sh", "shell"})
CONSOLE = frozenset({"console"})
PYTHON = frozenset({"python", "py"})
SQL = frozenset({"sql"})
RUNNABLE = SHELL | CONSOLE | PYTHON | SQL

# Markers, and whether each takes an argument (a path) and/or needs a reason in parentheses.
#   skip (why)        the block is not run; the reason is reported by the test
#   compile (why)     Python: compiled only (an API listing or a skeleton that cannot run)
#   job-body          Python: a fragment of a job, run as a real job's body (see jobbody.py)
#   expect STATUS (why)  the runs a shell block triggers end up STATUS (default COMPLETED)
#   postgres          runs against a throwaway PostgreSQL database (skipped when none)
#   file PATH         the block's text is written to PATH in the document's directory
#   append PATH       ... appended to PATH (a continuation of an earlier file block)
#   fixture PATH      tests/docs/fixtures/PATH is copied into the directory first
MARKERS = {
    "skip": False,
    "compile": False,
    "job-body": False,
    "expect": True,
    "postgres": False,
    "file": True,
    "append": True,
    "fixture": True,
}
NEEDS_REASON = frozenset({"skip", "compile"})
RUN_STATUSES = frozenset({"QUEUED", "RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELED"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*doc-test:(?P<body>.*?)-->\s*$")
_ITEM = re.compile(r"^(?P<word>[a-z-]+)(?:\s+(?P<arg>[^\s(]+))?\s*(?:\((?P<reason>.+)\))?$")
# A file block names its file on its first line: `# app.py`.
_FILE_HEADER = re.compile(r"^#\s*(?P<path>[\w./-]+\.py)(?::\s.*)?\s*$")


class MarkerError(ValueError):
    """A doc-test marker that does not parse: the doc test fails and names it."""


@dataclass(frozen=True)
class Marker:
    word: str
    arg: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    markers: tuple[Marker, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang})"

    @property
    def expected_status(self) -> str:
        m = self.marker("expect")
        return m.arg if m and m.arg else "COMPLETED"

    def marker(self, word: str) -> Marker | None:
        return next((m for m in self.markers if m.word == word), None)

    @property
    def skip_reason(self) -> str | None:
        m = self.marker("skip")
        return m.reason if m else None

    @property
    def postgres(self) -> bool:
        return self.marker("postgres") is not None

    @property
    def target_file(self) -> tuple[str, bool] | None:
        """(path, append) when the block is a file to write rather than code to run: marked
        `file`/`append`, or a Python block whose first line names it (`# app.py`, or
        `# app.py: what it is`)."""
        if self.marker("compile") or self.marker("job-body"):
            return None
        for word in ("file", "append"):
            m = self.marker(word)
            if m and m.arg:
                return m.arg, word == "append"
        if self.lang in PYTHON:
            first = self.text.split("\n", 1)[0]
            match = _FILE_HEADER.match(first)
            if match:
                return match["path"], False
        return None


def documents() -> list[Path]:
    """README.md and every page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_markers(comment_bodies: list[str], where: str) -> tuple[Marker, ...]:
    markers: list[Marker] = []
    for body in comment_bodies:
        for item in filter(None, (part.strip() for part in body.split(";"))):
            match = _ITEM.match(item)
            if not match or match["word"] not in MARKERS:
                raise MarkerError(
                    f"{where}: unknown doc-test marker {item!r} (known: {', '.join(MARKERS)})"
                )
            word, arg, reason = match["word"], match["arg"], match["reason"]
            if MARKERS[word] and not arg:
                raise MarkerError(f"{where}: doc-test marker {word!r} needs an argument")
            if word in NEEDS_REASON and not (reason and reason.strip()):
                raise MarkerError(f"{where}: `doc-test: {word}` needs a reason: {word} (why)")
            if word == "expect" and arg not in RUN_STATUSES:
                raise MarkerError(f"{where}: `doc-test: expect {arg}`: not a run status")
            if word == "expect" and arg != "COMPLETED" and not reason:
                raise MarkerError(f"{where}: `doc-test: expect {arg}` needs a reason (why)")
            markers.append(Marker(word, arg, reason.strip() if reason else None))
    return tuple(markers)


def extract(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of one Markdown file, with its markers."""
    doc = path.relative_to(root).as_posix()
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            pending.append(marker["body"])
            i += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and pending:
                raise MarkerError(f"{doc}:{i + 1}: a doc-test marker must be just before a fence")
            i += 1
            continue
        start, closing = i, fence["indent"] + fence["fence"]
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith(closing):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        where = f"{doc}:{start + 1}"
        markers = parse_markers(pending, where)
        pending = []
        text = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(doc, start + 1, fence["lang"].lower(), text, markers))
    if pending:
        raise MarkerError(f"{doc}: a doc-test marker at the end, before no fence")
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in documents() for b in extract(path)]
