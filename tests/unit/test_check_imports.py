"""scripts/check_imports.py: it finds cycles (local imports included) and unexplained local
imports, and the package has neither."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_imports.py"
checker: dict[str, Any] = runpy.run_path(str(SCRIPT))


def package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_a_cycle_behind_a_function_local_import_is_still_a_cycle(tmp_path: Path) -> None:
    root = package(
        tmp_path,
        {
            "a.py": "from pkg import b\n",
            "b.py": "def f():\n    # Imported here: a imports us.\n    from pkg import a\n",
        },
    )
    assert checker["problems"](root) == [
        "import cycle among pkg.a, pkg.b: pkg.a -> pkg.b; pkg.b -> pkg.a"
    ]


def test_type_checking_imports_make_no_cycle(tmp_path: Path) -> None:
    root = package(
        tmp_path,
        {
            "a.py": "from pkg import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        },
    )
    assert checker["problems"](root) == []


def test_a_local_import_needs_a_comment_heading_its_group(tmp_path: Path) -> None:
    root = package(
        tmp_path,
        {
            "a.py": "",
            "b.py": (
                "def f():\n    from pkg import a\n\n"
                "def g():\n    # Imported here: slow.\n    import json\n\n    from pkg import a\n"
            ),
        },
    )
    found = checker["problems"](root)
    assert len(found) == 1 and found[0].endswith(
        "b.py:2: function-local import of pkg.a without a comment saying why "
        "(move it to the top, or explain it)"
    )


def test_meshnet_has_no_cycle_and_no_unexplained_local_import() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
