"""`[discord] banned_words`: whole words and phrases, found through case, accents, look-alike letters, leetspeak,
invisible characters and spaced-out letters; innocent words that contain a banned one pass."""
from __future__ import annotations

import pytest

from bot.banned_words import BannedWords, fold_words

@pytest.mark.parametrize("prompt", [
    "a NUDE figure", "a nüde figure", "a ｎｕｄｅ figure", "a nud\u0435 figure (cyrillic e)", "a n u d e figure",
    "a n.u.d.e figure", "a nu\u200bde figure", "a nvde figure".replace("v", "\u03c5"), "a NUD3 figure",
])
def test_banned_words_are_found_through_case_accents_lookalikes_and_spacing(prompt):
    assert BannedWords(["nude", "blood bath"]).find(prompt) == "nude"


@pytest.mark.parametrize("prompt", ["a nudibranch on a reef", "a classic car", "bloody mary", "a bath of blood"])
def test_banned_words_match_whole_words_only(prompt):
    assert BannedWords(["nude", "ass", "blood bath"]).find(prompt) is None


@pytest.mark.parametrize("prompt", ["two nudes", "NUDES", "ɴᴜᴅᴇ in small capitals", "a frog's kisses"])
def test_banned_words_catch_plurals_and_small_capitals(prompt):
    assert BannedWords(["nude", "kiss"]).find(prompt) in ("nude", "kiss")


def test_banned_phrase_and_leetspeak():
    banned = BannedWords(["blood bath", "kill"])
    assert banned.find("a Blood  Bath at dawn") == "blood bath"
    assert banned.find("k1ll the lights") == "kill"
    assert fold_words("ＡＢＣ déjà") == ["abc", "deja"]
