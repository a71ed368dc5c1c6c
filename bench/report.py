"""A bench's section in a markdown report (docs/reliability.md): replaced in place, so reruns never pile up."""

from __future__ import annotations

from pathlib import Path

__all__ = ["put_section"]


def put_section(path: Path, title: str, body: str) -> None:
    """Write ``## title`` with ``body`` into ``path``: in place of an earlier section of that title, else at the end."""
    text = path.read_text() if path.is_file() else ""
    heading = f"\n## {title}\n"
    section = f"{heading}\n{body.rstrip()}\n"
    start = text.find(heading)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n" + section)
        return
    following = text.find("\n## ", start + len(heading))
    path.write_text(text[:start] + section + (text[following:] if following >= 0 else ""))
