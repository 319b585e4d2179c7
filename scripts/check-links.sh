#!/usr/bin/env bash
# Checks that every relative link and #anchor in README.md and docs/*.md resolves: the file (or
# directory) exists in the checkout, and an anchor names a heading of the target page as GitHub
# spells it. Links with a scheme (https:, mailto:) are not fetched: CI has no network to rely on.
# Exit 1 with file:line for each broken link. Python 3's standard library only.
#
#   bash scripts/check-links.sh [FILE.md ...]   (default: README.md docs/*.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
  set -- README.md docs/*.md
fi
exec python3 - "$@" <<'PY'
import os
import re
import sys
import unicodedata

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target), target up to the first space or ')'; an optional "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)((?:(?!\n\s*\n).)+?)\1", re.DOTALL)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks."""
    in_fence = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = FENCE.match(line)
            if m:
                if in_fence is None:
                    in_fence = m.group(1)
                elif m.group(1) == in_fence:
                    in_fence = None
                continue
            if in_fence is None:
                yield n, line.rstrip("\n")


def slug(text):
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link renders as its text
    text = text.lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LN" or cat == "Mn":
            out.append("-" if ch == " " else ch)
    return "".join(out)


_anchors = {}


def anchors(path):
    if path not in _anchors:
        seen = {}
        names = set()
        for _, line in prose_lines(path):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            names.add(base if count == 0 else f"{base}-{count}")
        _anchors[path] = names
    return _anchors[path]


def prose(path):
    """The file's text outside fenced code and code spans, line numbers kept (code becomes blank)."""
    lines = []
    in_fence = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = FENCE.match(line)
            if m:
                if in_fence is None:
                    in_fence = m.group(1)
                elif m.group(1) == in_fence:
                    in_fence = None
                lines.append("")
                continue
            lines.append("" if in_fence else line.rstrip("\n"))
    text = "\n".join(lines)
    # `[x](y)` inside code is not a link; a code span may wrap lines but not cross a blank one.
    return CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def check(path):
    errors = []
    text = prose(path)
    for m in LINK.finditer(text):
        n = text.count("\n", 0, m.start()) + 1
        target = m.group(1)
        if not target or SCHEME.match(target):
            continue
        checked.append(target)
        file_part, _, anchor = target.partition("#")
        if file_part:
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
            if not os.path.exists(resolved):
                errors.append(f"{path}:{n}: {target}: no such file {resolved}")
                continue
        else:
            resolved = path
        if anchor:
            if not resolved.endswith(".md") or os.path.isdir(resolved):
                errors.append(f"{path}:{n}: {target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                errors.append(f"{path}:{n}: {target}: no heading #{anchor} in {resolved}")
    return errors


files = sys.argv[1:]
checked = []
errors = []
for p in files:
    if not os.path.isfile(p):
        errors.append(f"{p}: no such file")
        continue
    errors.extend(check(p))
for e in errors:
    print(e, file=sys.stderr)
if errors:
    sys.exit(f"check-links: {len(errors)} broken link(s) in {len(files)} file(s)")
print(f"check-links: all {len(checked)} relative links and anchors in {len(files)} file(s) resolve")
PY
