"""The schema table of csrc/README.md is the library's registered schemas, each with the
file that defines it. A changed schema (which breaks users' code, checkpoints of
compiled graphs and torch.compile caches) shows up as a diff of that table.

    python tests/test_schemas.py --write    # regenerates the table after a deliberate change
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

import peftcore  # noqa: F401  (registers torch.ops.peftcore)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "csrc" / "README.md"
BEGIN, END = "<!-- schemas:begin -->", "<!-- schemas:end -->"


def defining_files() -> dict[str, str]:
    """op name -> the csrc file whose TORCH_LIBRARY_FRAGMENT defines it."""
    where = {}
    for path in sorted(ROOT.glob("csrc/*/*_schema.cpp")):
        for name in re.findall(r'"([a-z_0-9]+)\(', path.read_text()):
            where[name] = path.relative_to(ROOT / "csrc").as_posix()
    return where


def schema_table() -> str:
    where = defining_files()
    names = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("peftcore::"))
    lines = ["| op | defined in | schema |", "|---|---|---|"]
    for name in names:
        schema = str(getattr(torch.ops.peftcore, name).default._schema).removeprefix("peftcore::")
        lines.append(f"| `{name}` | `{where.get(name, '?')}` | `{schema}` |")
    return "\n".join(lines)


def readme_table() -> str:
    text = README.read_text()
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()


def test_every_op_is_defined_in_its_family_schema_file():
    where = defining_files()
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("peftcore::")}
    assert registered == set(where), registered ^ set(where)


def test_csrc_readme_lists_the_registered_schemas():
    assert readme_table() == schema_table(), "run: python tests/test_schemas.py --write"


if __name__ == "__main__":
    if "--write" in sys.argv:
        text = README.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        README.write_text(text[:start] + "\n" + schema_table() + "\n" + text[end:])
    else:
        print(schema_table())
