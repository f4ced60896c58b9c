"""The README's Python examples run: every ```python block, as a newcomer would paste it.

Each block runs on its own, in a fresh namespace, from a temporary working directory, in
the order of the README, and is named in the test id by the section that holds it (so a
failure says which example broke). A traceback points at the README's own line numbers.
Blocks fenced as ``bash``/``sh`` (shell commands) are not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_LANGS = ("python", "py", "python3")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_LEAD = re.compile(r"^\*\*(?P<title>[^*]+?)\.?\*\*")  # a paragraph led by "**Topic.**"


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file.

    Attributes
    ----------
    lang : str
        The info string's first word (``""`` when there is none), lower case.
    source : str
        The block's text, without its fences and common indentation.
    line : int
        The 1-based line number of its first line of code.
    section : str
        The title of the nearest heading above it (``""`` before any).
    topic : str
        The bold words that lead the nearest paragraph above it under that heading, such
        as ``"Bernoulli logits"`` for ``**Bernoulli logits.** A decoder ...`` (``""``
        when none does).
    """

    lang: str
    source: str
    line: int
    section: str
    topic: str = ""


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced code block of ``text`` (Markdown), in order.

    Parameters
    ----------
    text : str
        The Markdown source.

    Returns
    -------
    blocks : list of Block
        Headings inside code blocks are not taken for headings.

    Raises
    ------
    ValueError
        If a fence is never closed.
    """
    blocks: list[Block] = []
    section = topic = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            heading, lead = _HEADING.match(lines[i]), _LEAD.match(lines[i])
            if heading is not None:
                section, topic = heading["title"], ""
            elif lead is not None:
                topic = lead["title"]
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        start = i + 1
        end = start
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"the code fence opened on line {i + 1} is never closed")
        body = [line[indent:] if line[:indent].isspace() else line for line in lines[start:end]]
        source = "\n".join(body) + "\n"
        blocks.append(Block(opening["lang"].lower(), source, start + 1, section, topic))
        i = end + 1
    return blocks


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "x"


def _python_blocks() -> dict[str, Block]:
    """The README's Python blocks, in order, by test id: ``<section>[-<topic>]-<n>``."""
    blocks: dict[str, Block] = {}
    seen: dict[str, int] = {}
    for block in fenced_blocks(README.read_text(encoding="utf-8")):
        if block.lang not in PYTHON_LANGS:
            continue
        slug = "-".join(_slug(title) for title in (block.section, block.topic) if title)
        seen[slug] = seen.get(slug, 0) + 1
        blocks[f"{slug}-{seen[slug]}"] = block
    return blocks


PYTHON_BLOCKS = _python_blocks()


@pytest.mark.parametrize("block", list(PYTHON_BLOCKS.values()), ids=list(PYTHON_BLOCKS))
def test_readme_python_block_runs(block: Block, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Blank lines ahead of the code, so that tracebacks give the README's line numbers.
    code = compile("\n" * (block.line - 1) + block.source, str(README), "exec")
    exec(code, {"__name__": "__readme__"})


def test_readme_has_python_examples_and_usage_opens_with_one() -> None:
    """The blocks above are really found, and "Usage" starts with a complete example: one
    that trains (calls ``backward``) and prints the loss's terms."""
    assert len(PYTHON_BLOCKS) >= 5
    usage = [block for block in PYTHON_BLOCKS.values() if block.section == "Usage"]
    assert usage, 'no ```python block in the "Usage" section'
    lines = README.read_text(encoding="utf-8").splitlines()
    heading = lines.index("## Usage")
    first = next(line for line in lines[heading + 1 :] if line.strip())
    assert _FENCE.match(first) and first.strip() == "```python", (
        f'"Usage" must open with a ```python example, not {first!r}'
    )
    opening = usage[0].source
    for needed in ("BetaVAELoss(", ".backward()", "print(", "rec_loss", "kl_loss"):
        assert needed in opening, needed


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        (
            "# T\n```python\na = 1\n```\n## S\n```bash\nls\n```\n"
            "**Lead.** x\n  ```py\n  b = 2\n  ```\n",
            [
                ("python", "a = 1\n", 3, "T", ""),
                ("bash", "ls\n", 7, "S", ""),
                ("py", "b = 2\n", 11, "S", "Lead"),
            ],
        ),
        # A heading inside a block is code, and a longer fence holds a shorter one.
        (
            "````python\n# not a heading\n```\n````\n",
            [("python", "# not a heading\n```\n", 2, "", "")],
        ),
    ],
    ids=["headings-and-indented-fence", "nested-fence"],
)
def test_fenced_blocks_parses_markdown(markdown: str, expected: list[tuple]) -> None:
    got = [(b.lang, b.source, b.line, b.section, b.topic) for b in fenced_blocks(markdown)]
    assert got == expected


def test_an_unclosed_fence_is_an_error() -> None:
    with pytest.raises(ValueError, match="line 2 is never closed"):
        fenced_blocks("text\n```python\nx = 1\n")


def test_the_demo_section_lists_every_option_of_the_demo() -> None:
    """The option list beside ``make demo ARGS=...`` in "The demo" names every option of
    ``python -m betavae_triton.demo --help`` (``--lr`` was missing; issue 31)."""
    from betavae_triton.demo.__main__ import build_parser

    demo = [
        block.source
        for block in fenced_blocks(README.read_text(encoding="utf-8"))
        if block.section == "The demo" and "make demo ARGS=" in block.source
    ]
    assert len(demo) == 1, demo
    missing = [
        action.option_strings
        for action in build_parser()._actions
        if "--help" not in action.option_strings
        and not any(
            re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", demo[0])
            for option in action.option_strings
        )
    ]
    assert missing == [], f"options of the demo that the README does not list: {missing}"
