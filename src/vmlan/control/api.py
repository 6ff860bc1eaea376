"""The daemon's HTTP+JSON API (FastAPI): typed pydantic models, errors as 4xx with a message.

Every error body is ``{"detail": "<one line>"}`` (validation errors: FastAPI's list of problems, 422);
libvirt's wording where libvirt has one. Success answers come after the change is committed.
The OpenAPI document is generated from these models (``openapi.json`` beside this file, kept equal to
``create_app().openapi()`` by tests/control/test_openapi.py; ``python -m vmlan.control.openapi`` writes it).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from vmlan import __version__
from vmlan.control import dashboard
from vmlan.control.backends import ForwardRule
from vmlan.control.daemon import Daemon, DaemonError, Defined

Mode = Literal["auto", "rootless", "privileged"]
Proto = Literal["tcp", "udp"]
NetName = Annotated[str, Path(min_length=1, max_length=4096, description="network name")]
MAX_XML = 1 << 20


class Problem(BaseModel):
    detail: str = Field(description="what went wrong, in one line")


class NetworkDefine(BaseModel):
    xml: str = Field(max_length=MAX_XML, description="<network> XML, as virsh net-define takes it")
    mode: Mode = Field("auto", description="backend: auto (privileged when available, else rootless)")
    file: str | None = Field(None, max_length=4096, description="the file name, for messages only")


class NetworkSummary(BaseModel):
    name: str
    uuid: str
    active: bool
    autostart: bool
    persistent: bool
    mode: str = Field(description="the backend asked for: auto, rootless or privileged")
    backend: str | None = Field(description="the backend running it (rootless/privileged), None if inactive")
    bridge: str | None
    addresses: list[str] = Field(description="the <ip> addresses with their prefix length, as defined")


class XmlDocument(BaseModel):
    xml: str


class Autostart(BaseModel):
    autostart: bool


class LeaseOut(BaseModel):
    expiry_time: float = Field(description="wall-clock seconds")
    mac: str
    protocol: Literal["ipv4", "ipv6"]
    ip: str
    prefix: int
    hostname: str | None
    client_id: str | None


class DomainXml(BaseModel):
    xml: str = Field(max_length=MAX_XML, description="a <domain> (its <devices>' interfaces) or one <interface>")


class NativeRequest(DomainXml):
    format: Literal["qemu-argv"] = "qemu-argv"


class AttachedInterface(BaseModel):
    index: int
    type: str
    mac: str
    network: str | None
    target: str | None


class AttachOut(BaseModel):
    argv: list[str]
    interfaces: list[AttachedInterface]


class ArgvOut(BaseModel):
    argv: list[str]


class MonitorCommand(BaseModel):
    command: str = Field(max_length=65536, description="info network | info usernet | hostfwd_add ... | "
                                                       "hostfwd_remove ... | netdev_add ... | netdev_del ID | "
                                                       "set_link NAME on|off")
    target: str | None = Field(None, max_length=4096, description="a network name or a netdev id")


class MonitorOut(BaseModel):
    output: str


class Forward(BaseModel):
    proto: Proto = "tcp"
    host_addr: str = Field("", max_length=64, description="host address to listen on; empty: any")
    host_port: int = Field(ge=0, le=65535, description="0: the kernel picks (see bound_port)")
    guest_addr: str = Field(max_length=64)
    guest_port: int = Field(ge=1, le=65535)
    bound_port: int = Field(0, ge=0, le=65535)


class DnsRecord(BaseModel):
    name: str = Field(min_length=1, max_length=253)
    ip: str = Field(max_length=64)


class DnsTable(BaseModel):
    records: dict[str, list[str]]


class LinkState(BaseModel):
    up: bool


class SetLink(BaseModel):
    name: str = Field(min_length=1, max_length=4096)
    up: bool


class NetdevAdd(BaseModel):
    opts: str = Field(min_length=1, max_length=65536, description="QemuOpts text, as -netdev takes it")
    network: str | None = Field(None, max_length=4096, description="put it on this network's hub")


class Removed(BaseModel):
    removed: bool


class Count(BaseModel):
    removed: int


class Version(BaseModel):
    version: str
    uid: int


def _summary(daemon: Daemon, d: Defined) -> NetworkSummary:
    running = daemon.running.get(d.name)
    return NetworkSummary(name=d.name, uuid=str(d.net.uuid), active=running is not None, autostart=d.row.autostart,
                          persistent=d.row.persistent, mode=d.row.mode,
                          backend=running.mode if running is not None else None,
                          bridge=running.bridge if running is not None and running.bridge else d.net.bridge,
                          addresses=[f"{ip.address}/{ip.prefixlen}" for ip in d.net.ips])


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem},
    422: {"model": Problem, "description": "a request that does not fit the schema"},
}


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(title="vmlan", version=__version__,
                  description="libvirt-style virtual networks, rootless or privileged; QEMU monitor equivalents.",
                  responses=ERRORS)

    @app.exception_handler(DaemonError)
    async def daemon_error(request: Request, exc: DaemonError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    # -- networks --------------------------------------------------------------------------------------
    @app.get("/networks", tags=["networks"])
    async def list_networks() -> list[NetworkSummary]:
        """Every network, active or not, sorted by name (net-list --all)."""
        return [_summary(daemon, d) for _n, d in sorted(daemon.defined.items())]

    @app.post("/networks", tags=["networks"], status_code=201)
    async def define_network(body: NetworkDefine) -> NetworkSummary:
        """net-define: define (or redefine) a persistent network."""
        d = daemon.define(body.xml, body.mode, docname=body.file or "(network_definition)")
        return _summary(daemon, d)

    @app.post("/networks/create", tags=["networks"], status_code=201)
    async def create_network(body: NetworkDefine) -> NetworkSummary:
        """net-create: a transient network, started now, gone when destroyed."""
        d = await daemon.create(body.xml, body.mode, docname=body.file or "(network_definition)")
        return _summary(daemon, d)

    @app.get("/networks/{name}", tags=["networks"])
    async def network_info(name: NetName) -> NetworkSummary:
        """net-info."""
        return _summary(daemon, daemon.get(name))

    @app.delete("/networks/{name}", tags=["networks"])
    async def undefine_network(name: NetName) -> NetworkSummary:
        """net-undefine (an active network stays, transient, until destroyed)."""
        d = daemon.get(name)
        daemon.undefine(name)
        return _summary(daemon, d)

    @app.post("/networks/{name}/start", tags=["networks"])
    async def start_network(name: NetName) -> NetworkSummary:
        await daemon.start(name)
        return _summary(daemon, daemon.get(name))

    @app.post("/networks/{name}/destroy", tags=["networks"])
    async def destroy_network(name: NetName) -> NetworkSummary:
        d = daemon.get(name)
        await daemon.destroy(name)
        return _summary(daemon, d)

    @app.put("/networks/{name}/autostart", tags=["networks"])
    async def autostart_network(name: NetName, body: Autostart) -> NetworkSummary:
        daemon.set_autostart(name, body.autostart)
        return _summary(daemon, daemon.get(name))

    @app.get("/networks/{name}/xml", tags=["networks"])
    async def dumpxml(name: NetName, inactive: bool = False) -> XmlDocument:
        """net-dumpxml."""
        return XmlDocument(xml=daemon.dumpxml(name, inactive))

    @app.get("/networks/{name}/leases", tags=["networks"])
    async def dhcp_leases(name: NetName, mac: Annotated[str | None, Query(max_length=64)] = None) -> list[LeaseOut]:
        """net-dhcp-leases: unexpired leases, sorted by MAC."""
        out = []
        for r in daemon.leases(name, mac):
            out.append(LeaseOut(expiry_time=r.expires, mac=r.mac, protocol="ipv6" if ":" in r.ip else "ipv4", ip=r.ip,
                                prefix=daemon.prefix_of(name, r.ip), hostname=r.hostname, client_id=r.client_id))
        return out

    @app.get("/networks/{name}/status", tags=["networks"])
    async def network_status(name: NetName) -> dict[str, Any]:
        """The backend's view of a running network: ports, counters, addresses."""
        return daemon.running_net(name).info()

    @app.get("/networks/{name}/mac-table", tags=["networks"])
    async def mac_table(name: NetName) -> list[dict[str, Any]]:
        """The switch's learned MAC addresses (mac, port, age in seconds)."""
        return daemon.mac_table(name)

    @app.get("/networks/{name}/usernet", tags=["monitor"])
    async def info_usernet(name: NetName) -> list[dict[str, Any]]:
        """info usernet as JSON: forwards, TCP/UDP/ICMP flows, guests, counters."""
        return daemon.info_usernet_json(name)

    # -- forwards and DNS ------------------------------------------------------------------------------
    @app.get("/networks/{name}/forwards", tags=["forwards"])
    async def list_forwards(name: NetName) -> list[Forward]:
        return [Forward(**r.__dict__) for r in daemon.forwards(name)]

    @app.post("/networks/{name}/forwards", tags=["forwards"], status_code=201)
    async def expose(name: NetName, body: Forward) -> Forward:
        """Forward a host port to a guest (TCP or UDP); committed before the answer."""
        added = daemon.add_forward(name, ForwardRule(body.proto, body.host_addr, body.host_port, body.guest_addr,
                                                     body.guest_port))
        return Forward(**added.__dict__)

    @app.delete("/networks/{name}/forwards/{proto}/{host_port}", tags=["forwards"])
    async def unexpose(name: NetName, proto: Proto, host_port: Annotated[int, Path(ge=1, le=65535)],
                       host_addr: Annotated[str, Query(max_length=64)] = "") -> Removed:
        return Removed(removed=daemon.remove_forward(name, proto, host_addr, host_port))

    @app.get("/networks/{name}/dns", tags=["dns"])
    async def list_dns(name: NetName) -> DnsTable:
        """Names the network's DNS answers itself (from the XML and added)."""
        return DnsTable(records=daemon.dns_records(name))

    @app.post("/networks/{name}/dns", tags=["dns"], status_code=201)
    async def add_dns(name: NetName, body: DnsRecord) -> DnsTable:
        daemon.add_dns_record(name, body.name, body.ip)
        return DnsTable(records=daemon.dns_records(name))

    @app.delete("/networks/{name}/dns/{host}", tags=["dns"])
    async def remove_dns(name: NetName, host: Annotated[str, Path(min_length=1, max_length=253)],
                         ip: Annotated[str | None, Query(max_length=64)] = None) -> Count:
        return Count(removed=daemon.remove_dns_record(name, host, ip))

    # -- guests ----------------------------------------------------------------------------------------
    @app.post("/attach", tags=["guests"])
    async def attach(body: DomainXml) -> AttachOut:
        """Set up every <interface> and return the QEMU arguments that use them."""
        argv, report = daemon.attach(body.xml, os.geteuid())
        return AttachOut(argv=argv, interfaces=[AttachedInterface(**e) for e in report])

    @app.delete("/networks/{name}/attachments/{target}", tags=["guests"])
    async def detach(name: NetName, target: Annotated[str, Path(min_length=1, max_length=256)]) -> Removed:
        daemon.detach(name, target)
        return Removed(removed=True)

    @app.put("/networks/{name}/attachments/{target}/link", tags=["guests"])
    async def attachment_link(name: NetName, target: Annotated[str, Path(min_length=1, max_length=256)],
                              body: LinkState) -> LinkState:
        running = daemon.running_net(name)
        if target not in getattr(running, "attached", {}):
            raise DaemonError(404, f"Device '{target}' not found")
        daemon.set_link(target, body.up)
        return body

    @app.post("/domxml-to-native", tags=["guests"])
    async def domxml_to_native(body: NativeRequest) -> ArgvOut:
        """virsh domxml-to-native qemu-argv: the arguments alone, nothing set up."""
        return ArgvOut(argv=daemon.domxml_to_native(body.xml))

    # -- the monitor -----------------------------------------------------------------------------------
    @app.post("/monitor", tags=["monitor"])
    async def monitor(body: MonitorCommand) -> MonitorOut:
        """One QEMU monitor (HMP) command; its text output."""
        return MonitorOut(output=daemon.monitor(body.command, body.target))

    @app.get("/monitor/network", tags=["monitor"])
    async def info_network() -> list[dict[str, Any]]:
        """info network as JSON: hubs, netdevs, ports, counters."""
        return daemon.info_network_json()

    @app.post("/netdevs", tags=["monitor"], status_code=201)
    async def netdev_add(body: NetdevAdd) -> MonitorOut:
        return MonitorOut(output=daemon.netdev_add(body.opts, body.network))

    @app.delete("/netdevs/{ident}", tags=["monitor"])
    async def netdev_del(ident: Annotated[str, Path(min_length=1, max_length=256)]) -> Removed:
        daemon.netdev_del(ident)
        return Removed(removed=True)

    @app.post("/set_link", tags=["monitor"])
    async def set_link(body: SetLink) -> SetLink:
        daemon.set_link(body.name, body.up)
        return body

    @app.get("/stats", tags=["monitor"])
    async def stats() -> dict[str, Any]:
        """Per-port counters of every link, and the daemon's."""
        return daemon.stats()

    @app.get("/version", tags=["monitor"])
    async def version() -> Version:
        return Version(version=__version__, uid=os.geteuid())

    @app.get("/events", tags=["events"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
    async def events(limit: Annotated[int | None, Query(ge=1, le=1 << 20)] = None) -> StreamingResponse:
        """Server-sent events: guest-connected/left, lease-granted/expired, link-up/down,
        network-started/stopped. ``limit``: close after that many events."""
        sub = daemon.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            sent = 0
            try:
                yield b": vmlan events\n\n"
                while limit is None or sent < limit:
                    try:
                        kind, data = await asyncio.wait_for(sub.queue.get(), 15.0)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    yield f"event: {kind}\ndata: {json.dumps(data, sort_keys=True)}\n\n".encode()
                    sent += 1
            finally:
                daemon.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- the web dashboard (static, not part of the API's document) -----------------------------------
    def static(name: str) -> Response:
        found = dashboard.ASSETS.get(name)
        if found is None:
            raise DaemonError(404, f"no dashboard file '{name}'")
        return Response(found.body, media_type=found.media_type, headers=dashboard.HEADERS)

    @app.get("/", include_in_schema=False)
    async def dashboard_root() -> Response:
        return static("index.html")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return static("index.html")

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        return static(name)

    _ = Body  # imported for FastAPI's annotations elsewhere
    return app
