"""The API's OpenAPI document, generated from the FastAPI app and shipped as ``openapi.json`` beside
this module (tests/control/test_openapi.py keeps the file equal to what the app generates).

    python -m vmlan.control.openapi          # rewrite openapi.json
    python -m vmlan.control.openapi --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).with_name("openapi.json")


def generate() -> dict[str, Any]:
    from vmlan.control.api import create_app
    from vmlan.control.daemon import Daemon

    loop = asyncio.new_event_loop()
    try:
        daemon = Daemon(Path("/nonexistent/state"), Path("/nonexistent/run"), loop, backends={})
        schema: dict[str, Any] = create_app(daemon).openapi()
    finally:
        loop.close()
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def shipped() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SHIPPED.read_text())
    return data


def main(argv: list[str]) -> int:
    text = render(generate())
    if argv == ["--check"]:
        if not SHIPPED.exists() or SHIPPED.read_text() != text:
            sys.stderr.write(f"{SHIPPED} is out of date: run python -m vmlan.control.openapi\n")
            return 1
        return 0
    SHIPPED.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
