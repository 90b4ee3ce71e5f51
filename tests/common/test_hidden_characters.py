"""The regex that finds hidden characters finds exactly the characters their definition names."""

from __future__ import annotations

import sys

from services.common.validation import HIDDEN_CHARACTER, hidden_by_category, hidden_character


def test_the_character_class_equals_the_categories_over_every_code_point():
    differing = [code for code in range(sys.maxunicode + 1)
                 if bool(HIDDEN_CHARACTER.fullmatch(chr(code))) != hidden_by_category(chr(code))]
    assert differing == []


def test_the_first_hidden_character_is_named():
    assert hidden_character("教研\u202e组\x00") == "U+202E"
    assert hidden_character("第一行\r\n\t第二行") is None
    assert hidden_character("a\ud800") == "U+D800"
