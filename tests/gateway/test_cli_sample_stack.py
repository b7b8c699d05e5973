"""``scoregate dev`` and ``demo`` where the sample stack (scoregate-dev) is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The deployed gateway has no scoregate_dev; None in sys.modules makes its import fail the
# same way in this checkout, where it is installed.
WITHOUT_SAMPLE_STACK = (
    "import sys; sys.modules['scoregate_dev'] = None; "
    "from gateway.cli import main; main(sys.argv[1:])"
)


@pytest.mark.parametrize("command", ["dev", "demo"])
def test_dev_and_demo_say_how_to_get_the_sample_stack(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_SAMPLE_STACK, command, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"`scoregate {command}` runs the sample stack" in done.stderr
    assert "pip install ./sample" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_the_gateway_command_does_not_load_the_sample_stack() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gateway.app, gateway.cli, gateway.asgi; "
            "print(sorted(m for m in sys.modules if m.startswith(('scoregate_dev', 'numpy'))))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
