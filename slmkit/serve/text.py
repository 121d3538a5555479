"""Incremental detokenisation with stop sequences: which text of a growing token list is safe to send."""

from __future__ import annotations


class TextTracker:
    """Turn generated token ids into text deltas.

    Full re-decoding each step keeps tokenizer-specific spacing right (SentencePiece/BPE merge across tokens).
    Text is held back while it ends in an incomplete UTF-8 character or in a prefix of a stop sequence, so a
    stop sequence never reaches the client, even split across tokens.
    """

    def __init__(self, tokenizer, stops: list[str] | None = None):
        self.tok = tokenizer
        self.stops = [s for s in (stops or []) if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append one token; return the new text that is safe to send ('' if none yet)."""
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        self.text = text
        if self.stops:
            window = max(0, self.sent - max(len(s) for s in self.stops))
            hits = [i for s in self.stops if (i := text.find(s, window)) >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.stopped = True
                return self.flush()
        safe = len(text) - self._held_suffix(text)
        if safe <= self.sent:
            return ""
        out = text[self.sent : safe]
        self.sent = safe
        return out

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that could start a stop sequence."""
        longest = max((len(s) for s in self.stops), default=0)
        for k in range(min(longest - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """Everything not sent yet (call when generation ends)."""
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out
