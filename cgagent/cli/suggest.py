"""Suggestions for a mistyped option. click's own (difflib ratio >= 0.6) offered nonsense such as
`--label` -> "--help, --name": a suggestion is offered only for a likely typo (one or two edits,
a swap of neighbours counting as one) or for an unambiguous start of a longer name."""

from __future__ import annotations

from collections.abc import Iterable


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insert, delete, substitute, swap adjacent."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def suggest(typed: str, names: Iterable[str], limit: int = 3) -> list[str]:
    word = typed.lstrip("-")
    if not word:
        return []
    allowed = 1 if len(word) <= 4 else 2
    scored: list[tuple[int, str]] = []
    for name in set(names):
        if not name.startswith("--"):
            continue
        cand = name[2:]
        if len(word) >= 3 and cand.startswith(word):
            scored.append((0, name))
            continue
        d = _distance(word, cand)
        if d <= allowed:
            scored.append((d, name))
    return [n for _d, n in sorted(scored, key=lambda s: (s[0], len(s[1]), s[1]))[:limit]]
