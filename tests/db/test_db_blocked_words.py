"""Blocked words cannot be dodged with invisible characters, soft hyphens, look-alike letters
from other alphabets or compatibility forms; whole-word matching stays."""

from __future__ import annotations

import pytest

from db import find_blocked

WORDS = ("gore", "ass", "bad thing")


@pytest.mark.parametrize(
    "prompt",
    [
        "some g\u200bore here",  # zero-width space
        "some g\u200core here",  # zero-width non-joiner
        "some go\u200dre here",  # zero-width joiner
        "some g\u2060ore here",  # word joiner
        "some g\ufeffore here",  # byte order mark
        "some go\u00adre here",  # soft hyphen
        "some g\u043ere here",  # Cyrillic о
        "some \u0261ore here",  # Latin script g (ɡ)
        "some g\u03bfr\u0435 here",  # Greek ο and Cyrillic е
        "some GОRЕ here",  # Cyrillic capitals О and Е
        "some \uff47\uff4f\uff52\uff45 here",  # fullwidth letters (NFKC)
        "some \U0001d420\U0001d428\U0001d42b\U0001d41e here",  # mathematical bold (NFKC)
        "some go\ufe0fre here",  # variation selector
        "\u0430ss",  # Cyrillic а
        "a b\u0430d\u00a0thing",  # Cyrillic а and a no-break space inside the phrase
    ],
)
def test_disguised_words_are_found(prompt: str) -> None:
    assert find_blocked(prompt, WORDS) in WORDS


@pytest.mark.parametrize(
    "prompt",
    ["a class of students", "a gorey... no: gorgeous sunset", "bad things happen", "passage"],
)
def test_whole_words_only_still(prompt: str) -> None:
    assert find_blocked(prompt, WORDS) is None


def test_a_blocked_word_written_with_look_alikes_blocks_the_plain_word() -> None:
    # An admin who pasted the word with a Cyrillic letter (or a soft hyphen) still blocks it.
    assert find_blocked("plain gore", ["g\u043e\u00adre"]) == "g\u043e\u00adre"
    assert find_blocked("a Cl\u0430ss act", ["class"]) == "class"


def test_ordinary_text_in_other_scripts_is_left_alone() -> None:
    # Russian and Greek prose does not turn into a blocked English word by accident.
    assert find_blocked("собака на снегу", WORDS) is None
    assert find_blocked("καλημέρα κόσμε", WORDS) is None
    assert find_blocked("a sunny day", ["день"]) is None
    assert find_blocked("хороший день", ["день"]) == "день"
