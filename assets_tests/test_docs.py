"""The docs a newcomer reads: a short README with the two commands, links that resolve, and a
measurements page generated from the benchmark results, never edited by hand."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    setup = readme[readme.index("## Set up a fresh machine") :][:600]
    assert "make demo" in setup and "make test" in setup


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_measurements_page_is_generated_from_the_results():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "measurements.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "measurements.md").read_text()
    assert {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")} <= set(
        re.findall(r"^## (\S+)", page, re.M)
    )
