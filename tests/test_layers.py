"""The architecture holds: imports point down only (web -> storage -> core).

Read from the source with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.servers import ROOT

SERVICE = ROOT / "service"
CLIENT = ROOT / "clients" / "python" / "process_status_client"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {name}"
            for path in paths for name in sorted(imports(path))
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)]


def test_the_layers_are_folders() -> None:
    assert (SERVICE / "storage" / "__init__.py").is_file()
    assert (SERVICE / "web" / "__init__.py").is_file()


def test_storage_never_imports_web_or_aiohttp() -> None:
    storage = [path for path in SERVICE.glob("storage/**/*.py")]
    assert offending(storage, ("service.web", "aiohttp", "gunicorn")) == []


def test_core_never_imports_storage_or_web() -> None:
    core = [path for path in modules(SERVICE) if path.name != "__main__.py"]
    assert core, "no core modules found"
    assert offending(core, ("service.storage", "service.web", "aiohttp", "gunicorn")) == []


def test_the_client_needs_nothing_from_the_server() -> None:
    assert offending(modules(CLIENT), ("service", "orjson", "prometheus_client", "gunicorn",
                                       "uvloop")) == []
