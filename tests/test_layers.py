"""The architecture holds: imports point down only.

    web (the server process) -> api, exposition -> http -> core
    web, api -> storage -> core

Read from the source with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.servers import ROOT

SERVICE = ROOT / "service"
CLIENT = ROOT / "clients" / "python" / "process_status_client"
HTTP_FOLDERS = ("service.http", "service.api", "service.exposition", "service.web")


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


def under(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {name}"
            for path in paths for name in sorted(imports(path)) if under(name, forbidden)]


def folder(name: str) -> list[Path]:
    paths = modules(SERVICE / name)
    assert paths, f"no modules found in service/{name}"
    return paths


def core_modules() -> list[Path]:
    return [path for path in modules(SERVICE) if path.name != "__main__.py"]


def test_the_layers_are_folders() -> None:
    for name in ("storage", "http", "api", "exposition", "web"):
        assert (SERVICE / name / "__init__.py").is_file(), name


def test_storage_never_imports_http_or_aiohttp() -> None:
    storage = [path for path in SERVICE.glob("storage/**/*.py")]
    assert offending(storage, (*HTTP_FOLDERS, "aiohttp", "gunicorn")) == []


def test_core_never_imports_storage_or_http() -> None:
    core = core_modules()
    assert core, "no core modules found"
    assert offending(core, ("service.storage", *HTTP_FOLDERS, "aiohttp", "gunicorn")) == []


def test_the_http_vocabulary_needs_only_core_aiohttp_and_orjson() -> None:
    service = {"service.http"} | {f"service.{path.stem}" for path in core_modules()}
    outside = {"aiohttp", "orjson"} | set(sys.stdlib_module_names)
    strays = [f"{path.relative_to(ROOT)} imports {name}"
              for path in folder("http") for name in sorted(imports(path))
              if not (under(name, service) or name.split(".")[0] in outside)]
    assert strays == []


def test_the_api_never_imports_the_server_process_or_the_metrics_sites() -> None:
    assert offending(folder("api"), ("service.web", "service.exposition", "gunicorn")) == []


def test_the_metrics_sites_never_import_the_api_or_the_server_process() -> None:
    assert offending(folder("exposition"), ("service.api", "service.web", "gunicorn")) == []


def test_only_the_command_imports_the_server_process() -> None:
    below = [path for path in SERVICE.rglob("*.py")
             if path.parent != SERVICE / "web" and path.name != "__main__.py"]
    assert offending(below, ("service.web",)) == []


def test_the_client_needs_nothing_from_the_server() -> None:
    assert offending(modules(CLIENT), ("service", "orjson", "prometheus_client", "gunicorn",
                                       "uvloop")) == []
