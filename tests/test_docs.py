"""Every guide in docs/ is executed: its python blocks in order, in one namespace, outputs checked.

A block with ``>>>`` prompts runs as a doctest (its printed output must match, ``...`` standing
for any text); any other python block is plain code, executed as it stands. A failure names the
guide's own line.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted(DOCS.glob("*.md"))

FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first line, code) for every ```python block."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)]


def test_the_guide_has_the_four_steps_and_the_closing_sections() -> None:
    headings = re.findall(r"^## (.+)$", (DOCS / "porting.md").read_text(), re.MULTILINE)
    assert headings == [
        "The initial asyncio version",
        "Switch the event loop to greenbridge",
        "Convert the client",
        "Convert the server callback",
        "Convert the server",
        "Key points",
        "Limitations",
    ]


@pytest.mark.parametrize("guide", GUIDES, ids=[guide.name for guide in GUIDES])
def test_every_block_of_the_guide_runs_as_shown(guide: Path) -> None:
    name = f"docs/{guide.name}"
    blocks = python_blocks(guide.read_text())
    assert blocks, f"{name} has no python blocks"
    namespace: dict[str, object] = {"__name__": guide.stem}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.REPORT_NDIFF)
    checked = 0
    for lineno, code in blocks:
        if ">>> " in code:
            test = parser.get_doctest(code, namespace, f"{name}:{lineno}", str(guide), lineno - 1)
            namespace = test.globs  # get_doctest shares the dict: definitions carry on
            report: list[str] = []
            result = runner.run(test, out=report.append, clear_globs=False)
            if result.failed:
                pytest.fail(f"{name}, block at line {lineno}:\n{''.join(report)}", pytrace=False)
            checked += result.attempted
        else:
            exec(compile(code, f"{name}:{lineno}", "exec"), namespace)
    assert checked >= 5  # the guide's examples ran, not only its definitions


def test_the_guides_are_found() -> None:
    assert {"facades.md", "porting.md"} <= {guide.name for guide in GUIDES}
