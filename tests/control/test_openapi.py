"""The shipped OpenAPI document equals what the app generates, and a running daemon conforms to it
(schemathesis: generated requests over the real unix socket; never a 5xx, answers as documented)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from vmlan.control.openapi import SHIPPED, generate, render, shipped

from .conftest import DaemonProcess


def test_shipped_document_is_current() -> None:
    assert SHIPPED.read_text() == render(generate()), "run: python -m vmlan.control.openapi"
    doc = shipped()
    assert doc["openapi"].startswith("3.")
    assert {"/networks", "/attach", "/domxml-to-native", "/monitor", "/events"} <= set(doc["paths"])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, httpx.Client]]:
    d = DaemonProcess(tmp_path_factory.mktemp("schemathesis"))
    d.start()
    (d.base / "lab.xml").write_text(
        "<network><name>lab</name><forward/><dns><forwarder addr='127.0.0.1'/></dns>"
        "<ip address='192.168.61.1' netmask='255.255.255.0'><dhcp>"
        "<range start='192.168.61.10' end='192.168.61.20'/></dhcp></ip></network>")
    d.vmlan("net-define", str(d.base / "lab.xml"))
    d.vmlan("net-start", "lab")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), base_url="http://vmlan", timeout=30)
    yield d, client
    client.close()
    code = d.stop()
    log = d.log.read_text()
    assert code == 0 and "Traceback" not in log, log


schema = schemathesis.openapi.from_dict(shipped()).exclude(path="/events")  # an endless stream


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_daemon_conforms_to_its_document(case: schemathesis.Case, running: tuple[DaemonProcess, httpx.Client]) -> None:
    _d, client = running
    kwargs = case.as_transport_kwargs(base_url="http://vmlan")
    if isinstance(kwargs.get("data"), str | bytes):
        kwargs["content"] = kwargs.pop("data")
    request = client.build_request(kwargs.pop("method"), kwargs.pop("url"), **{
        k: v for k, v in kwargs.items() if k in ("params", "headers", "json", "content", "cookies", "data")})
    response = client.send(request)
    assert response.status_code < 500, (case.method, case.path, response.text)
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                              response_schema_conformance])


def test_events_documented_as_a_stream() -> None:
    op = shipped()["paths"]["/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert Path(SHIPPED).name == "openapi.json"
