"""TensorFlow's rules for op, scope and variable names, shared by the client and the server.

The two Python patterns are TensorFlow 2.x's ``framework/ops.py`` ones, copied exactly
(``match`` with ``$``, as TF calls them); :func:`is_valid_node_name` is the C++ rule that TF's
runtime applies to every node it runs (``core/framework/node_def_util.cc``,
``IsValidNodeName``): the Python pattern without ``\\``, where ``>`` must start another
name (``a>b``, not ``a>`` or ``a>_b``).
"""

from __future__ import annotations

import difflib
import heapq
import itertools
import re
from collections.abc import Iterable

from varstore.common.errors import clip

VALID_OP_NAME_REGEX = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")
VALID_SCOPE_NAME_REGEX = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")
# Bounds of did_you_mean's work (see there).
HINT_MAX_NAME = 256
HINT_MAX_SCANNED = 5000
HINT_MAX_WORK = 1 << 21
_HINT_CUTOFF = 0.85
_NODE_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*(?:>[A-Za-z0-9.][A-Za-z0-9_.\-/]*)*")


def check_scope_name(name: str, at_root: bool) -> None:
    """TF's ``Graph.name_scope`` check of a non-empty scope name (a variable's or an op's
    name opens a scope too): the op-name pattern at the root, the scope pattern inside.

    Raises:
        ValueError: with TensorFlow's message.
    """
    if at_root:
        if not VALID_OP_NAME_REGEX.match(name):
            raise ValueError(
                f"'{name}' is not a valid root scope name. A root scope name has to match the "
                f"following pattern: {VALID_OP_NAME_REGEX.pattern}")
    elif not VALID_SCOPE_NAME_REGEX.match(name):
        raise ValueError(
            f"'{name}' is not a valid scope name. A scope name has to match the following "
            f"pattern: {VALID_SCOPE_NAME_REGEX.pattern}")


def check_node_name(name: str) -> None:
    """TF's ``Operation`` check of a full op name.

    Raises:
        ValueError: with TensorFlow's message (which prints the compiled pattern's repr).
    """
    if not VALID_OP_NAME_REGEX.match(name):
        raise ValueError(f"`{name}` is not a valid node name. Accepted names conform to Regex "
                         f"/{VALID_OP_NAME_REGEX}/")


def is_valid_node_name(name: str) -> bool:
    """Whether TensorFlow's runtime accepts ``name`` as a node (variable) name."""
    return _NODE_NAME.fullmatch(name) is not None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A hint naming the known name closest to ``name`` (``layer1/W`` for ``layr1/W``):
    ``" (did you mean layer1/W?)"``, or ``""`` when none is close. TensorFlow gives no such
    hint; messages append it after TensorFlow's text.

    Its cost is bounded whatever the names (it runs on error paths that any client reaches):
    no hint for a name over :data:`HINT_MAX_NAME` characters, names over it are skipped, at
    most :data:`HINT_MAX_SCANNED` known names are looked at (their lengths first, then their
    characters as a multiset, linear, as ``difflib.get_close_matches`` filters them) and
    those compared in full (``difflib``'s ratio, quadratic in the names' lengths) add up
    to at most :data:`HINT_MAX_WORK` pairs of characters.
    """
    if len(name) > HINT_MAX_NAME:
        return ""
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(name)
    scored: list[tuple[float, str]] = []
    work = 0
    for candidate in itertools.islice(known, HINT_MAX_SCANNED):
        if work >= HINT_MAX_WORK:
            break
        if len(candidate) > HINT_MAX_NAME:
            continue
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() < _HINT_CUTOFF or matcher.quick_ratio() < _HINT_CUTOFF:
            continue
        work += len(name) * len(candidate)
        score = matcher.ratio()
        if score >= _HINT_CUTOFF:
            scored.append((score, candidate))
    leaf = name.rsplit("/", 1)[-1]
    # Close as whole names, and the last parts close too: "foo/y" is another variable than
    # "foo/x", not a typo of it; "foo/w" (case) and "foo/Ww" (one letter more) are typos.
    close = [c for _, c in heapq.nlargest(3, scored)
             if _leaves_close(leaf, c.rsplit("/", 1)[-1])]
    return f" (did you mean {clip(close[0])}?)" if close else ""


def _leaves_close(typed: str, known: str) -> bool:
    """Whether ``typed`` is a typo of ``known``: alike as ``difflib`` rates them, the same
    but for case, or ``known`` with one character more or less."""
    if typed.lower() == known.lower():
        return True
    if abs(len(typed) - len(known)) == 1:
        short, long_ = sorted((typed, known), key=len)
        if any(long_[:i] + long_[i + 1:] == short for i in range(len(long_))):
            return True
    return difflib.SequenceMatcher(None, typed, known).ratio() >= 0.75
