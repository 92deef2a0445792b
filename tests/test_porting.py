"""docs/porting.md is executed: every python block in order, in one namespace, outputs checked.

A block with ``>>>`` prompts runs as a doctest (its printed output must match exactly); any other
python block is plain code, executed as it stands. A failure names the guide's own line.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "porting.md"

FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first line, code) for every ```python block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)]


def test_the_guide_has_the_four_steps_and_the_closing_sections() -> None:
    headings = re.findall(r"^## (.+)$", GUIDE.read_text(), re.MULTILINE)
    assert headings == [
        "The initial asyncio version",
        "Switch the event loop to greenbridge",
        "Convert the client",
        "Convert the server callback",
        "Convert the server",
        "Key points",
        "Limitations",
    ]


def test_every_block_of_the_porting_guide_runs_as_shown() -> None:
    text = GUIDE.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 10
    namespace: dict[str, object] = {"__name__": "porting_guide"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.REPORT_NDIFF)
    checked = 0
    for lineno, code in blocks:
        if ">>> " in code:
            test = parser.get_doctest(code, namespace, f"docs/porting.md:{lineno}", str(GUIDE), lineno - 1)
            namespace = test.globs  # get_doctest shares the dict: definitions carry on
            report: list[str] = []
            result = runner.run(test, out=report.append, clear_globs=False)
            if result.failed:
                pytest.fail(f"docs/porting.md, block at line {lineno}:\n{''.join(report)}", pytrace=False)
            checked += result.attempted
        else:
            exec(compile(code, f"docs/porting.md:{lineno}", "exec"), namespace)
    assert checked >= 10  # every step ran its examples
    assert namespace["gb"].in_green() is False  # type: ignore[attr-defined]
