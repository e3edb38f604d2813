"""The client installs on its own: a fresh venv gets aiohttp and the client, nothing of
the server, and talks to the real service from there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.servers import ROOT, serving

SCRIPT = textwrap.dedent("""
    import asyncio, importlib.util, sys
    for server_part in ("service", "gunicorn", "prometheus_client", "uvloop", "orjson"):
        assert importlib.util.find_spec(server_part) is None, server_part + " was installed"
    from process_status_client import ProcessStatusClient

    async def main(url):
        async with ProcessStatusClient(url) as client:
            result = await client.record("installed.alone", 1422057007123000)
            assert result.advanced, result
            assert await client.processed("installed.alone", 1422057007123000)
            assert not await client.processed("installed.alone", 1422057007123001)
        print("ok")

    asyncio.run(main(sys.argv[1]))
""")


def test_pip_install_of_the_client_alone_works_against_the_service(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # A copy: pip builds a local project in place and would leave build/ in the checkout.
    source = shutil.copytree(ROOT / "clients" / "python", tmp_path / "client",
                             ignore=shutil.ignore_patterns("tests", "build", "*.egg-info"))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    with serving(tmp_path / "data") as server:
        # Run away from the checkout, so `service` cannot be found beside the script.
        run = subprocess.run([str(python), "-I", "-c", SCRIPT, server.url], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
