"""The shortest way to finish a grammar-constrained value, found with the grammar's own matcher.

Used by `pbd_integrations.grammar.LLGuidanceConstraint` to keep an answer
valid when the token budget runs out: from the current matcher state it
finds the fewest tokens that bring the grammar to an accepting state (close
the open string, arrays and objects, write the required keys with the
shortest values the schema allows, close the ``</tool_call>`` tag, ...).

How: a shortest-path search over *bytes*, each step one single-byte token
fed to a copy of the `llguidance.LLMatcher`, so anything the grammar
compiles (nested objects, arrays with ``minItems``, numbers with ranges,
enums, ``const``, ``anyOf``, patterns, escapes, the tool-call wrapper) is
handled by the matcher itself; nothing here knows the schema. Three things
keep it small:

- inside a JSON string where most bytes are allowed (free text), all content
  bytes lead to equivalent states, so one representative is tried besides the
  closing quote; the same for long runs of allowed digits;
- states are merged by a fingerprint: the full next-token mask of the matcher
  plus a small JSON lexer state (`Lex`: the open containers with each object's
  current key and each array's item count, inside a string or not, the length
  of the current string or number). Two paths that reach the same fingerprint
  are taken to have the same shortest completion, so the free text of a string
  collapses to one state per length;
- runs of bytes the grammar forces (``unchline": "`` after ``"p``) are taken
  in one step (`LLMatcher.compute_ff_bytes`).

The texts found within a few bytes of the shortest are then split into the
fewest tokens of the vocabulary (`fewest_tokens`, a dynamic program over the
token byte strings; the matcher accepts any tokenization of the same bytes),
and the one with the fewest tokens wins. The result is always a completion
the matcher accepted; that it is the shortest rests on the fingerprint
heuristic and the representatives, which hold for the grammars
``grammar.py`` builds.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

_STRUCTURAL = frozenset(b'"{}[],:')
_DIGITS = frozenset(b"0123456789")
_CONTENT_PREFERENCE = b"a0 "  # representative of "any content byte", in order of preference
_WIDE = 12  # more allowed content bytes than this: the position is free text
_FREE = 90  # this many allowed content bytes: no pattern to follow (all printable ASCII is ~95)
_NARROW_WORDS = 64  # masks with at most this many non-zero 32-bit words are read token by token


@dataclass
class Vocab:
    """Byte strings of a tokenizer's tokens, for splitting text into tokens."""

    token_bytes: list[bytes]  # by token id; b"" for special tokens
    by_bytes: dict[bytes, int]  # non-special token ids by their bytes
    byte_token: list[int | None]  # the single-byte token of each byte value
    max_len: int
    first_byte: Any  # numpy int16 [vocab]: first byte of each token, -1 for special tokens
    byte_ids: Any  # numpy int64: the single-byte tokens ...
    byte_values: Any  # ... and their byte values
    prefixes: frozenset  # every proper prefix of a token's bytes


_vocab_lock = threading.Lock()
_vocabs: dict[int, tuple[Any, Vocab]] = {}


def vocab_of(ll_tokenizer: Any) -> Vocab:
    """The `Vocab` of an `llguidance.LLTokenizer` (built once per tokenizer, ~0.1 s)."""
    with _vocab_lock:
        cached = _vocabs.get(id(ll_tokenizer))
        if cached is not None and cached[0] is ll_tokenizer:
            return cached[1]
        token_bytes: list[bytes] = []
        by_bytes: dict[bytes, int] = {}
        for token in range(ll_tokenizer.vocab_size):
            data = b"" if ll_tokenizer.is_special_token(token) else ll_tokenizer.decode_bytes([token])
            token_bytes.append(data)
            if data and (data not in by_bytes or len(data) == 1):
                by_bytes.setdefault(data, token)
        byte_token = [by_bytes.get(bytes([b])) for b in range(256)]
        first_byte = np.array([data[0] if data else -1 for data in token_bytes], dtype=np.int16)
        singles = [(token, b) for b, token in enumerate(byte_token) if token is not None]
        vocab = Vocab(
            token_bytes,
            by_bytes,
            byte_token,
            max(map(len, by_bytes), default=1),
            first_byte,
            np.array([t for t, _ in singles], dtype=np.int64),
            np.array([b for _, b in singles], dtype=np.int64),
            frozenset(data[:i] for data in by_bytes for i in range(1, len(data))),
        )
        _vocabs[id(ll_tokenizer)] = (ll_tokenizer, vocab)
        return vocab


def fewest_tokens(vocab: Vocab, data: bytes) -> list[int] | None:
    """``data`` split into the fewest tokens of ``vocab`` (None if some byte has no token)."""
    n = len(data)
    best: list[tuple[int, int, int]] = [(0, -1, -1)] + [(n + 1, -1, -1)] * n  # (count, start, token)
    for start in range(n):
        count = best[start][0]
        if count > n:
            continue
        for end in range(start + 1, min(n, start + vocab.max_len) + 1):
            piece = data[start:end]
            token = vocab.by_bytes.get(piece)
            if token is not None and count + 1 < best[end][0]:
                best[end] = (count + 1, start, token)
            if piece not in vocab.prefixes:
                break  # no longer token starts with these bytes
    if best[n][0] > n:
        return None
    tokens: list[int] = []
    end = n
    while end > 0:
        _, start, token = best[end]
        tokens.append(token)
        end = start
    return tokens[::-1]


# --------------------------------------------------------------------------- a JSON lexer, byte by byte


class Lex(NamedTuple):
    """Where a byte stream stands in JSON text: the skeleton of the path to the current value.

    ``mode``: 0 undecided (nothing but space or a ``<tool_call>`` tag yet), 1 JSON,
    2 not JSON (free text: the lexer stays out of it). ``tag``: bytes of a
    ``<tool_call>`` tag matched so far while undecided. ``stack``: the open
    containers, ``("{", key)`` with the object's current key or ``("[", n)`` with
    the number of items begun. ``escape``: bytes of an escape still to come inside
    a string. ``run``: bytes since the last structural byte (the length of the
    current string or number). ``key``: the bytes of the key being read (or just
    read, before its colon); None in values. ``expect_key``: inside an object, where
    a key may start.
    """

    mode: int = 0
    tag: int = 0
    stack: tuple = ()
    in_string: bool = False
    escape: int = 0
    run: int = 0
    key: bytes | None = None
    expect_key: bool = False

    @property
    def in_json_string(self) -> bool:
        """Inside a JSON string value (not a key, not free text)."""
        return self.mode == 1 and self.in_string and self.key is None


_TAG = b"<tool_call>"
_MAX_KEY = 64  # longer keys are told apart by their first bytes only


def lex_step(state: Lex, byte: int) -> Lex:
    """The lexer state after one more byte."""
    if state.mode == 2:
        return state
    if state.mode == 0:
        tag = state.tag
        if tag < len(_TAG):
            if byte == _TAG[tag]:
                return state._replace(tag=tag + 1)
            if tag == 0 and byte in b" \t\r\n":
                return state
            if tag > 0:
                return Lex(2)
        elif byte in b" \t\r\n":  # after the tag
            return state
        if byte not in b'{["':
            return Lex(2)
        state = state._replace(mode=1, tag=0)
    if state.in_string:
        key = state.key
        if state.escape:
            escape = 4 if state.escape == 1 and byte == ord("u") else state.escape - 1
            return state._replace(escape=escape, run=state.run + 1, key=_grow(key, byte))
        if byte == ord("\\"):
            return state._replace(escape=1, run=state.run + 1, key=_grow(key, byte))
        if byte == ord('"'):
            return state._replace(in_string=False, run=0)
        return state._replace(run=state.run + 1, key=_grow(key, byte))
    stack = state.stack
    if byte == ord('"'):
        key = b"" if state.expect_key and stack and stack[-1][0] == "{" else None
        return state._replace(in_string=True, run=0, key=key, expect_key=False)
    if byte == ord("{"):
        return state._replace(stack=stack + (("{", None),), run=0, key=None, expect_key=True)
    if byte == ord("["):
        return state._replace(stack=stack + (("[", 0),), run=0, key=None, expect_key=False)
    if byte in b"}]":
        return state._replace(stack=stack[:-1], run=0, key=None, expect_key=False)
    if byte == ord(","):
        if stack and stack[-1][0] == "[":
            return state._replace(stack=stack[:-1] + (("[", stack[-1][1] + 1),), run=0, key=None)
        return state._replace(run=0, key=None, expect_key=bool(stack))
    if byte == ord(":"):
        if stack and stack[-1][0] == "{":
            stack = stack[:-1] + (("{", state.key),)
        return state._replace(stack=stack, run=0, key=None, expect_key=False)
    return state._replace(run=state.run + 1)


def _grow(key: bytes | None, byte: int) -> bytes | None:
    return key + bytes([byte]) if key is not None and len(key) < _MAX_KEY else key


def lex_feed(state: Lex, data: bytes) -> Lex:
    for byte in data:
        state = lex_step(state, byte)
    return state


# --------------------------------------------------------------------------- the search


def _allowed_bytes(mask: bytes, vocab: Vocab) -> list[int]:
    """Bytes the matcher accepts next: the first bytes of the allowed tokens.

    (Not only the allowed single-byte tokens: where bytes are forced llguidance
    allows only the canonical longer token, yet accepts its bytes one by one.)
    """
    words = np.frombuffer(mask, dtype=np.uint32)
    nonzero = np.flatnonzero(words)
    if len(nonzero) <= _NARROW_WORDS:
        bits = np.unpackbits(words[nonzero].view(np.uint8), bitorder="little").reshape(len(nonzero), 32)
        tokens = (nonzero[:, None] * 32 + np.arange(32))[bits.view(bool)]
        tokens = tokens[tokens < len(vocab.first_byte)]
        present = np.zeros(257, dtype=bool)
        present[vocab.first_byte[tokens]] = True  # first_byte is -1 (index 256) for special tokens
        firsts = np.flatnonzero(present[:256]).tolist()
    else:  # many tokens allowed: no byte is forced, so the single-byte tokens tell
        ids = vocab.byte_ids
        firsts = vocab.byte_values[(words[ids >> 5] >> (ids & 31)) & 1 == 1].tolist()
    return [b for b in firsts if vocab.byte_token[b] is not None]


def _take_forced(matcher: Any, vocab: Vocab) -> bytes | None:
    """Consume the bytes the grammar forces next (none when it is accepting); None if that fails."""
    taken = b""
    while not _accepting(matcher):
        forced = matcher.compute_ff_bytes()
        if not forced:
            break
        tokens = [vocab.byte_token[b] for b in forced]
        if None in tokens or not matcher.consume_tokens(tokens):
            return None
        taken += forced
    return taken


def _pick(candidates: list[int]) -> int:
    for byte in _CONTENT_PREFERENCE:
        if byte in candidates:
            return byte
    return candidates[0]


def _candidates(allowed: list[int], lex: Lex) -> list[int]:
    """The bytes worth trying next: all allowed ones, minus content that cannot make the end nearer.

    In free text (a JSON string where most bytes are allowed) every content byte leads
    to an equivalent state: the closing quote is tried, or, when the string may not end
    yet (``minLength``), one representative byte. A number that may end here is not
    made longer; where it may not, two of the allowed digits stand for all.
    """
    if lex.in_string and not lex.escape:
        content = [b for b in allowed if b not in b'"\\']
        if len(content) <= _WIDE:
            return allowed
        if ord('"') in allowed:
            return [ord('"')]
        # May not end yet (minLength, a pattern): one letter for all, and the punctuation a pattern may need.
        if len(content) >= _FREE:
            return [_pick(content)]
        marks = [b for b in content if 0x21 <= b < 0x7F and not chr(b).isalnum()]
        return [_pick(content)] + [b for b in marks if b != _pick(content)]
    if lex.in_string or len(allowed) <= _WIDE and not (lex.run and lex.mode == 1):
        return allowed
    digits = [b for b in allowed if b in _DIGITS]
    keep = [b for b in allowed if b in _STRUCTURAL]
    if lex.mode == 1 and lex.run and any(b in b",}]" for b in keep):
        return keep  # a number (or literal) that may end here
    keep += [b for b in allowed if chr(b) in "-.eEtfn<"]
    keep += sorted({digits[0], digits[-1]}) if digits else []
    rest = [b for b in allowed if b not in keep and b not in _DIGITS]
    return keep + ([_pick(rest)] if rest else [])


def _accepting(matcher: Any) -> bool:
    return matcher.is_accepting() or (matcher.is_stopped() and not matcher.is_error())


@dataclass
class Completion:
    """A way to finish: its bytes and the fewest tokens that write them."""

    text: bytes
    tokens: list[int]


def shortest_completion(
    matcher: Any,
    vocab: Vocab,
    lex: Lex,
    *,
    extra_bytes: int = 4,
    max_nodes: int = 3000,
    max_bytes: int = 1024,
) -> Completion | None:
    """The completion with the fewest tokens from ``matcher``'s state (not modified), or None.

    Args:
        lex: The lexer state of the text the matcher has consumed.
        extra_bytes: Also consider completions up to this many bytes longer than the
            shortest, in case they split into fewer tokens.
        max_nodes: Give up (None) after this many search states.
        max_bytes: Give up beyond completions this long.
    """
    if _accepting(matcher):
        return Completion(b"", [])
    if matcher.is_error():
        return None
    root = matcher.deep_copy()
    start = _take_forced(root, vocab)
    if start is None:
        return None
    lex = lex_feed(lex, start)
    if _accepting(root):
        found_root = start
        tokens = fewest_tokens(vocab, start) or [vocab.byte_token[b] for b in start]
        return Completion(found_root, tokens) if completes(matcher, tokens) else None
    mask = root.compute_bitmask()
    key = (hash(mask), lex._replace(tag=0))
    heap: list[tuple[int, int, bytes, Any, Lex, bytes, Any]] = [(len(start), 0, start, root, lex, mask, key)]
    seen = {key: len(start)}  # shortest text that reached each fingerprint
    found: list[bytes] = []
    limit = max_bytes
    counter = 0
    while heap:
        length, _, text, state, state_lex, state_mask, key = heapq.heappop(heap)
        if length > limit:
            break
        if seen[key] < length:
            continue  # reached again by a shorter text
        for byte in _candidates(_allowed_bytes(state_mask, vocab), state_lex):
            child = state.deep_copy()
            if not child.consume_token(vocab.byte_token[byte]):
                continue
            forced = _take_forced(child, vocab)
            if forced is None:
                continue
            step = bytes([byte]) + forced
            child_text = text + step
            child_lex = lex_feed(state_lex, step)
            if _accepting(child):
                if len(child_text) <= limit:
                    found.append(child_text)
                    limit = min(limit, len(child_text) + extra_bytes)
                continue
            child_mask = child.compute_bitmask()
            key = (hash(child_mask), child_lex._replace(tag=0))
            if seen.get(key, max_bytes + 1) <= len(child_text):
                continue
            seen[key] = len(child_text)
            counter += 1
            if counter > max_nodes:
                heap = []
                break
            heapq.heappush(heap, (len(child_text), counter, child_text, child, child_lex, child_mask, key))
    best: Completion | None = None
    for text in found:
        tokens = fewest_tokens(vocab, text)
        if tokens is None:
            tokens = [vocab.byte_token[b] for b in text]
        if best is None or (len(tokens), len(text)) < (len(best.tokens), len(best.text)):
            best = Completion(text, tokens)
    if best is not None and not completes(matcher, best.tokens):
        best = Completion(best.text, [vocab.byte_token[b] for b in best.text])  # the path the search took
        if not completes(matcher, best.tokens):
            return None
    return best


def completes(matcher: Any, tokens: list[int]) -> bool:
    """Whether ``tokens`` take ``matcher`` (not modified) to an accepting state."""
    copy = matcher.deep_copy()
    return copy.try_consume_tokens(tokens) == len(tokens) and _accepting(copy)
