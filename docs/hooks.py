"""mkdocs hook: fill every ``<!-- rendered: NAME -->`` marker from the committed results files (docs/render.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render import fill  # noqa: E402


def on_page_markdown(markdown, page, config, files):
    return fill(markdown)
