"""Real English text available offline: the Python standard library's own documentation.

- :func:`documents`: every docstring of the standard library's modules, classes
  and functions (read with :mod:`ast` from the source files, nothing is
  imported or executed), plus the topics of the language reference that
  ``pydoc`` ships (``pydoc_data.topics``).  Deduplicated, in a fixed order.
- :func:`split_of`: a document's split (``train`` / ``val`` / ``sae``) from a
  hash of its text, so splits do not depend on the order of files.
- :func:`words`: the word-level tokenisation of the embedded LM (lower case;
  runs of letters, runs of digits, and single punctuation marks).
- :func:`sentences`: prose sentences of the language reference (for MiniLM).

The text depends on the Python version that runs it; the embedded LM's
token windows are therefore committed with the model (see :mod:`harness.embedded.docstring_lm`), and
the MiniLM sentence set is hashed into the activation cache key.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sysconfig
import zlib
from functools import lru_cache

_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "turtledemo", "tkinter",
              "ensurepip", "dist-packages"}
_WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def _stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files)


def _docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 3:
                out.append(doc)
    return out


def pydoc_topics() -> list[str]:
    """The language-reference topics that ``pydoc`` ships, sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return []
    return [topics[k] for k in sorted(topics)]


@lru_cache(maxsize=1)
def documents() -> tuple[str, ...]:
    """Standard-library docstrings then pydoc topics, deduplicated, in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []
    for path in _stdlib_files():
        for doc in _docstrings(path):
            if doc not in seen:
                seen.add(doc)
                out.append(doc)
    for doc in pydoc_topics():
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return tuple(out)


def split_of(doc: str) -> str:
    """``val`` (10%), ``sae`` (10%) or ``train`` (80%), from a CRC32 of the text."""
    h = zlib.crc32(doc.encode("utf-8")) % 10
    return "val" if h == 0 else "sae" if h == 1 else "train"


def words(text: str) -> list[str]:
    """Lower-cased words, digit runs and single punctuation marks."""
    return _WORD.findall(text.lower())


def text_hash(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Prose sentences of the pydoc language-reference topics (6-40 words, mostly letters), deduplicated."""
    out: list[str] = []
    seen: set[str] = set()
    for topic in pydoc_topics():
        for para in re.split(r"\n\s*\n", topic):
            lines = para.splitlines()
            if not lines or any(l.startswith((" ", "\t")) for l in lines):
                continue  # indented blocks are code, grammar or tables
            text = " ".join(l.strip() for l in lines)
            if "***" in text or "===" in text or "---" in text:
                continue
            for sent in _SENT_SPLIT.split(text):
                sent = sent.strip()
                n_words = len(sent.split())
                if not 6 <= n_words <= 40 or not sent[0].isupper() or sent[-1] not in ".!?":
                    continue
                letters = sum(c.isalpha() or c == " " for c in sent)
                if letters < 0.85 * len(sent) or sent in seen:
                    continue
                seen.add(sent)
                out.append(sent)
    return tuple(out)
