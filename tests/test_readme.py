"""README's first commands are the ones users and CI run: keep them true."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    python3 -m venv")]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = _indented_commands((REPO / "README.md").read_text(encoding="utf-8"))[:2]
    assert demo.endswith("rlr demo")
    assert tests.endswith("python -m pytest -q") and '".[dev]"' in tests


def test_ci_runs_exactly_the_readme_test_command():
    tests = _indented_commands((REPO / "README.md").read_text(encoding="utf-8"))[1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert tests in ci_lines
