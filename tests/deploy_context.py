"""The Docker build context, reproduced without an engine: the Dockerfile's instructions, ``.dockerignore`` as
BuildKit applies it, and the files each ``COPY`` brings into the image, replayed into a folder.

Supported: the instructions this project's Dockerfile uses (``COPY`` in shell and JSON form, ``--chown``/``--chmod``
flags ignored; ``WORKDIR``; line continuations; comments). ``ADD`` of URLs or archives and ``COPY --from`` (another
stage) are refused, so a Dockerfile that starts using them fails the tests here instead of being replayed wrongly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: COPY, RUN, ...
    args: str
    line: int  # 1-based line of the instruction in the Dockerfile


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comment lines dropped (also inside continuations)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = no
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(p for p in buf if p)
        buf = []
        name, _, args = joined.partition(" ")
        out.append(Instruction(name.upper(), args.strip(), start))
    if buf:
        raise ValueError("Dockerfile ends inside a line continuation")
    return out


def copy_sources(instr: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY instruction."""
    if instr.name == "ADD":
        raise ValueError(f"line {instr.line}: ADD is not replayed here; use COPY for files of the context")
    args = instr.args
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.strip()
    if any(f.startswith("--from") for f in flags):
        raise ValueError(f"line {instr.line}: COPY --from (a build stage) is not replayed here")
    parts = json.loads(args) if args.startswith("[") else args.split()
    if len(parts) < 2:
        raise ValueError(f"line {instr.line}: COPY needs a source and a destination: {instr.args!r}")
    return parts[:-1], parts[-1]


# -- .dockerignore -------------------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` and ``?`` stay within one path element, ``**`` spans any number of them."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" : zero or more whole elements
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += pattern[i:j + 1]
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """``.dockerignore`` rules: the last matching pattern decides; ``!`` re-includes; a pattern that matches a
    folder excludes everything under it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        self._reinclude_prefixes: list[str] = []  # the literal start of each "!" pattern
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pat = line[1:].strip() if negate else line
            pat = str(PurePosixPath("/" + pat)).lstrip("/") or "."  # filepath.Clean, leading "/" dropped
            self.rules.append((negate, _pattern_regex(pat)))
            if negate:
                self._reinclude_prefixes.append(re.split(r"[*?\[]", pat, maxsplit=1)[0])

    def prunable(self, rel_dir: str) -> bool:
        """True when nothing under the folder can be in the context: it is excluded and no "!" pattern could
        re-include a path below it (what lets a walk skip .venv and .git)."""
        if not self.excluded(rel_dir):
            return False
        return not any(p == "" or p.startswith(rel_dir + "/") or (rel_dir + "/").startswith(p)
                       for p in self._reinclude_prefixes if "/" in p or p == "")

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        verdict = False
        for negate, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                verdict = not negate
        return verdict


# -- replay --------------------------------------------------------------------------------------------------------
def context_files(repo: Path, ignore: DockerIgnore) -> list[str]:
    """Every file of the build context (the repository minus ``.dockerignore``), relative POSIX paths."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(repo):
        base = Path(dirpath).relative_to(repo).as_posix()
        base = "" if base == "." else base + "/"
        dirnames[:] = [d for d in dirnames if not ignore.prunable(base + d)]
        out.extend(base + f for f in filenames if not ignore.excluded(base + f))
    return sorted(out)


def replay(repo: Path, instructions: list[Instruction], root: Path) -> dict[str, list[str]]:
    """Apply the COPY instructions to ``root`` (the image's file system, initially empty) as a build would.

    Returns, per COPY (``"line N"``), the image paths it wrote. A source that matches nothing in the context
    raises ``FileNotFoundError``, as the build would fail there.
    """
    ignore = DockerIgnore((repo / ".dockerignore").read_text() if (repo / ".dockerignore").exists() else "")
    files = context_files(repo, ignore)
    workdir = PurePosixPath("/")
    written: dict[str, list[str]] = {}
    for instr in instructions:
        if instr.name == "WORKDIR":
            workdir = workdir / instr.args
            continue
        if instr.name not in ("COPY", "ADD"):
            continue
        sources, dest = copy_sources(instr)
        dest_path = workdir / dest
        multiple = len(sources) > 1
        out: list[str] = []
        for src in sources:
            src_clean = str(PurePosixPath("/" + src)).lstrip("/")
            rx = _pattern_regex(src_clean) if any(ch in src_clean for ch in "*?[") else None
            matched_file = [f for f in files if (rx.match(f) if rx else f == src_clean)]
            matched_dir = [f for f in files if not rx and f.startswith(src_clean + "/")]
            if src_clean in (".", ""):
                matched_dir = files
            if not matched_file and not matched_dir:
                raise FileNotFoundError(f"Dockerfile line {instr.line}: COPY {src}: not found in the build context "
                                        "(missing, or excluded by .dockerignore)")
            for f in matched_file:
                into_dir = multiple or dest.endswith("/") or rx is not None
                target = dest_path / PurePosixPath(f).name if into_dir else dest_path
                out.append(_copy(repo / f, root, target))
            for f in matched_dir:
                rel = PurePosixPath(f).relative_to(src_clean) if src_clean not in (".", "") else PurePosixPath(f)
                out.append(_copy(repo / f, root, dest_path / rel))
        written[f"line {instr.line}"] = out
    return written


def _copy(src: Path, root: Path, image_path: PurePosixPath) -> str:
    target = root / str(image_path).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)
    return str(image_path)
