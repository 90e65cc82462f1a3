"""`[discord] banned_words`: whole-word matching of prompts after Unicode folding (NFKC, no invisible characters, no
accents, case-folded, look-alike letters and digit stand-ins folded to one Latin letter, spaced-out words joined)."""
from __future__ import annotations

import logging
import re
import unicodedata

log = logging.getLogger(__name__)


# Letters from other scripts that look like Latin ones, and the usual digit/symbol stand-ins.
_LOOKALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l",
    "ԛ": "q", "ԝ": "w",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ϲ": "c", "ѵ": "v",
    # small capitals (NFKC keeps them)
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j",
    "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ꞯ": "q", "ʀ": "r", "ꜱ": "s", "ᴛ": "t",
    "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
    # Latin look-alikes NFKC keeps
    "ı": "i", "ɡ": "g", "ɑ": "a", "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d",
    # digits and symbols used for letters
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
    # l and i look alike: fold both to i
    "l": "i",
})
_WORD = re.compile(r"\w+")


def fold_text(text: str) -> str:
    """The comparison form of a text: NFKC, no invisible characters, no accents, case-folded, look-alike
    letters folded to one Latin letter."""
    # 1. compatibility forms (full-width, ligatures, math letters) become plain letters
    text = unicodedata.normalize("NFKC", text)
    # 2. invisible format characters (zero-width space/joiner, soft hyphen) disappear
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    # 3. accents come off
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    # 4. case, then look-alikes (after casefold, so that upper-case look-alikes are caught too)
    return text.casefold().translate(_LOOKALIKES)


def fold_words(text: str) -> list[str]:
    """The words of a text in comparison form. Runs of single letters ("a n u d e", "n.u.d.e") also give
    every word they spell ("an", "nud", "nude", …), so spacing a word out does not hide it."""
    words = _WORD.findall(fold_text(text))
    out = list(words)
    run: list[str] = []
    for w in words + [""]:
        if len(w) == 1:
            run.append(w)
            continue
        if len(run) > 1:
            out.extend(_spelled(run))
        run = []
    return out


def _spelled(letters: list[str], longest: int = 40) -> list[str]:
    """Every join of two or more consecutive letters (only the whole run when it is very long)."""
    if len(letters) > longest:
        return ["".join(letters)]
    return ["".join(letters[i:j]) for i in range(len(letters)) for j in range(i + 2, len(letters) + 1)]


def _inflections(word: str) -> set[str]:
    """A banned word and its plural forms ("frog" → frogs; "kiss" → kisses); not prefixes, which would ban
    innocent words ("ass" in "assistant")."""
    return {word, word + "s", word + "es"}


class BannedWords:
    """Whole-word (or whole-phrase) matching of `[discord] banned_words` against prompts."""

    def __init__(self, words: list[str]):
        self._phrases: list[tuple[tuple[str, ...], str]] = []
        for entry in words:
            folded = tuple(_WORD.findall(fold_text(entry)))
            if folded:
                self._phrases.append((folded, entry))
            else:
                log.warning("banned word %r has no letters or digits; it is ignored", entry)

    def find(self, prompt: str) -> str | None:
        """The first configured entry the prompt contains, or None."""
        if not self._phrases:
            return None
        words = fold_words(prompt)
        joined = " " + " ".join(words) + " "
        for phrase, entry in self._phrases:
            if len(phrase) == 1:
                if not _inflections(phrase[0]).isdisjoint(words):
                    return entry
            elif " " + " ".join(phrase) + " " in joined:
                return entry
        return None
