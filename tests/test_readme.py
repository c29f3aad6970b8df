"""The README's two commands stay true. (Its Python blocks run in tests/test_docs.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")


def command_after(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.+?)\n```", TEXT)
    assert match, f"README.md has no ```bash block after <!-- {marker} -->"
    return match.group(1)


def test_main_command_trains_on_the_shipped_sample(tmp_path: Path) -> None:
    """The README's main job, minus its `pip install` (the suite runs from an installed checkout)."""
    command = command_after("main-command")
    install, run = (part.strip() for part in command.split("&&"))
    assert install.startswith("pip install ") and run == "matgrad train"
    exe = shutil.which("matgrad")
    assert exe, "the matgrad console script is installed"
    result = subprocess.run([exe, "train"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final = float(re.findall(r"test acc +([\d.]+)%", result.stdout)[-1])
    assert final >= 90.0, result.stdout


def test_test_command_is_what_ci_runs() -> None:
    command = command_after("test-command")
    assert "python -m pytest" in command
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in ci  # .ci/run extracts and runs this very line
