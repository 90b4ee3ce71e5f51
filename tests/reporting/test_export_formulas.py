"""Formula protection of CSV/XLSX exports holds against what spreadsheets skip or fold (issue 12, item 16)."""

from __future__ import annotations

import pytest

from services.reporting.exports import neutralise

DISGUISED = ["=1+1", " =1+1", "\n=HYPERLINK(\"x\")", "\u200b=1+1", "＝1+1", "\u3000＋cmd", "\ufeff@SUM(A1)",
             "\t-2+3", "\xa0=1", "\r\n+1"]


@pytest.mark.parametrize("text", DISGUISED)
def test_disguised_formulas_become_text(text: str) -> None:
    assert neutralise(text) == "'" + text


@pytest.mark.parametrize("value", ["青山一中", "A-1", "1", 12, 3.5, None, "", "  ", "第1名 = 最好"])
def test_ordinary_values_are_left_alone(value: object) -> None:
    assert neutralise(value) == value
