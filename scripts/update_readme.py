"""Regenerate the support matrix in README.md from the target catalog (`make readme`)."""
from pathlib import Path

from modelkiln.compiler.matrix import render_markdown

START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"
readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
head, rest = text.split(START, 1)
readme.write_text(head + START + "\n" + render_markdown() + "\n" + END + rest.split(END, 1)[1])
print(f"updated {readme}")
