import pytest

from vmlan.config.cmdline import parse_run_args
from vmlan.config.errors import ConfigError
from vmlan.config.netdev import (
    DgramNetdev,
    InetAddr,
    StreamNetdev,
    UnixAddr,
    UserNetdev,
    parse_hub,
    parse_netdev,
    parse_object,
)
from vmlan.config.qemu_args import guest_netdev


def test_socket_listen_connect_mcast_udp():
    assert parse_netdev("socket,id=vm2,listen=127.0.0.1:8010") == StreamNetdev(
        "vm2", 0, "socket", True, InetAddr("127.0.0.1", 8010)
    )
    assert parse_netdev("socket,id=c,connect=:8010,reconnect-ms=500,hubid=3") == StreamNetdev(
        "c", 3, "socket", False, InetAddr("127.0.0.1", 8010), 500
    )
    assert parse_netdev("socket,id=lan,mcast=230.0.0.1:1234,localaddr=127.0.0.1") == DgramNetdev(
        "lan", 0, "socket", InetAddr("230.0.0.1", 1234), None, True, "127.0.0.1"
    )
    assert parse_netdev("socket,id=u,udp=127.0.0.1:2000,localaddr=127.0.0.1:2001") == DgramNetdev(
        "u", 0, "socket", InetAddr("127.0.0.1", 2000), InetAddr("127.0.0.1", 2001)
    )


def test_stream_and_dgram_keyval():
    assert parse_netdev("stream,id=vm1,server=on,addr.type=unix,addr.path=/tmp/vm1.sock") == StreamNetdev(
        "vm1", 0, "stream", True, UnixAddr("/tmp/vm1.sock")
    )
    nd = parse_netdev("stream,id=c,addr.type=inet,addr.host=127.0.0.1,addr.port=9000,reconnect=2")
    assert nd == StreamNetdev("c", 0, "stream", False, InetAddr("127.0.0.1", 9000), 2000)
    nd = parse_netdev(
        "dgram,id=d,local.type=unix,local.path=/tmp/a,remote.type=unix,remote.path=/tmp/b"
    )
    assert nd == DgramNetdev("d", 0, "dgram", UnixAddr("/tmp/b"), UnixAddr("/tmp/a"))
    nd = parse_netdev("dgram,id=m,remote.type=inet,remote.host=230.0.0.1,remote.port=1234,"
                      "local.type=inet,local.host=127.0.0.1,local.port=0")
    assert isinstance(nd, DgramNetdev) and nd.multicast and nd.mcast_if == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("socket,id=a", "exactly one of listen=, connect=, mcast= or udp= is required"),
        ("socket,id=a,listen=:1,connect=:2", "exactly one of listen=, connect=, mcast= or udp= is required"),
        ("socket,id=a,listen=:1,localaddr=1.2.3.4", "localaddr= is only valid with mcast= or udp="),
        ("socket,id=a,udp=127.0.0.1:5", "localaddr= is mandatory with udp="),
        ("socket,id=a,mcast=10.0.0.1:5", "specified mcast address 10.0.0.1 is not for multicast"),
        ("socket,id=a,listen=8010", "host address '8010' doesn't contain ':'"),
        ("socket,id=a,listen=:80x", "Parameter 'listen' expects a port number (got '80x')"),
        ("socket,id=a,listen=:70000", "Parameter 'listen' expects a value in 0..65535 (got '70000')"),
        ("socket,id=a,listen=300.1.1.1:5", "Parameter 'listen' expects an IPv4 address (got '300.1.1.1')"),
        ("socket,id=a,listen=:1,bogus=1", "Invalid parameter 'bogus' for netdev type 'socket'"),
        ("socket,id=9a,listen=:1", "Parameter 'id' expects an identifier (got '9a' for netdev)"),
        ("socket,listen=:1", "Parameter 'id' is missing"),
        ("stream,id=a", "Parameter 'addr' is missing"),
        ("stream,id=a,addr.type=tcp", "Parameter 'addr.type' does not accept value 'tcp'"),
        ("stream,id=a,addr.type=inet,addr.host=127.0.0.1", "Parameter 'addr.port' is missing"),
        ("stream,id=a,addr.type=unix", "Parameter 'addr.path' is missing"),
        ("stream,id=a,server=maybe,addr.type=unix,addr.path=/x", "Parameter 'server' expects 'on' or 'off'"),
        (
            "stream,id=a,server=on,reconnect=1,addr.type=unix,addr.path=/x",
            "'reconnect' option is incompatible with socket in server mode",
        ),
        ("dgram,id=a,local.type=unix,local.path=/x", "dgram requires remote= parameter"),
        ("dgram,id=a,remote.type=unix,remote.path=/x", "dgram requires local= parameter"),
        ("l2tpv3,id=t", "netdev type 'l2tpv3' is not available in this version of vmlan"),
        ("tap,id=t,fd=3,script=no", "are invalid with fd="),
        ("frobnicate,id=u", "Parameter 'type' does not accept value 'frobnicate'"),
    ],
)
def test_netdev_errors_name_the_option_and_value(text, message):
    with pytest.raises(ConfigError) as info:
        parse_netdev(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_hub_and_filter_dump():
    assert parse_hub("id=2,mode=switch,aging=10").mode == "switch"
    with pytest.raises(ConfigError, match="Parameter 'mode' does not accept value 'router'"):
        parse_hub("id=1,mode=router")
    dump = parse_object("filter-dump,id=d0,netdev=vm1,file=/tmp/vm1.pcap")
    assert (dump.netdev, dump.file, dump.maxlen, dump.queue) == ("vm1", "/tmp/vm1.pcap", 65536, "all")
    with pytest.raises(ConfigError, match=r"Property 'filter-dump\.colour' not found"):
        parse_object("filter-dump,id=d0,netdev=vm1,file=x,colour=red")


def test_run_args_duplicate_ids_and_unknown_dump_target():
    with pytest.raises(ConfigError, match="Duplicate ID 'a' for netdev"):
        parse_run_args(["-netdev", "socket,id=a,listen=:1", "-netdev", "socket,id=a,listen=:2"])
    with pytest.raises(ConfigError, match="Device 'nope' not found"):
        parse_run_args(["-netdev", "socket,id=a,listen=:1", "-object", "filter-dump,id=d,netdev=nope,file=x"])
    with pytest.raises(ConfigError, match=r"^-netdev socket,id=a: exactly one of"):
        parse_run_args(["-netdev", "socket,id=a"])
    with pytest.raises(ConfigError, match="unrecognized option '-nic'"):
        parse_run_args(["-nic", "user"])


def test_run_args_default_and_hubs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cfg = parse_run_args([])
    assert cfg.is_default
    user, link = cfg.netdevs
    # QEMU's default network (-netdev user with its defaults), on hub 0, behind the usual socket.
    assert isinstance(user, UserNetdev) and user.id == "user0" and user.hubid == 0
    assert (str(user.net), str(user.host), str(user.dns), str(user.dhcp_start)) == (
        "10.0.2.0/24", "10.0.2.2", "10.0.2.3", "10.0.2.15")
    assert isinstance(link, StreamNetdev) and link.server and link.hubid == 0
    assert link.addr == UnixAddr(str(tmp_path / "vmlan" / "lan0.sock"))
    assert cfg.hubs.keys() == {0}
    cfg = parse_run_args(["-netdev", "socket,id=a,listen=:1,hubid=4", "-hub", "id=4,mode=switch"])
    assert cfg.hubs[4].mode == "switch" and cfg.hubs.keys() == {4}


@pytest.mark.parametrize(
    ("vmlan_side", "qemu_side"),
    [
        ("socket,id=a,listen=127.0.0.1:8010", "socket,id=n0,connect=127.0.0.1:8010"),
        ("socket,id=a,listen=:8010", "socket,id=n0,connect=127.0.0.1:8010"),
        ("socket,id=a,connect=127.0.0.1:8010", "socket,id=n0,listen=127.0.0.1:8010"),
        (
            "socket,id=a,mcast=230.0.0.1:1234,localaddr=127.0.0.1",
            "socket,id=n0,mcast=230.0.0.1:1234,localaddr=127.0.0.1",
        ),
        (
            "socket,id=a,udp=127.0.0.1:2000,localaddr=127.0.0.1:2001",
            "socket,id=n0,udp=127.0.0.1:2001,localaddr=127.0.0.1:2000",
        ),
        (
            "stream,id=a,server=on,addr.type=unix,addr.path=/tmp/a,,b",
            "stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/a,,b",
        ),
        (
            "dgram,id=a,local.type=unix,local.path=/v,remote.type=unix,remote.path=/g",
            "dgram,id=n0,local.type=unix,local.path=/g,remote.type=unix,remote.path=/v",
        ),
    ],
)
def test_guest_side_options_mirror_ours(vmlan_side, qemu_side):
    assert guest_netdev(parse_netdev(vmlan_side)) == qemu_side


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stream,id=a,addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.to=9", "Parameter 'addr.to' is not"),
        ("stream,id=a,addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.mptcp=on", "Parameter 'addr.mptcp' is not"),
        ("stream,id=a,addr.type=unix,addr.path=x,addr.abstract=on,addr.tight=off", "Parameter 'addr.tight' is not"),
    ],
)
def test_qemu_address_options_vmlan_lacks_are_refused_not_ignored(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_netdev(text)


def test_keep_alive_is_kept_and_harmless_options_accepted():
    nd = parse_netdev("stream,id=a,addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.keep-alive=on,addr.mptcp=off")
    assert isinstance(nd, StreamNetdev) and isinstance(nd.addr, InetAddr) and nd.addr.keepalive
    nd = parse_netdev("stream,id=a,addr.type=unix,addr.path=x,addr.abstract=on,addr.tight=on")
    assert nd.addr == UnixAddr("x", True)


def test_max_peers_on_listening_netdevs():
    assert parse_netdev("socket,id=a,listen=:1").max_peers == 64
    assert parse_netdev("socket,id=a,listen=:1,max-peers=3").max_peers == 3
    assert parse_netdev("stream,id=a,server=on,addr.type=unix,addr.path=x,max-peers=0x10").max_peers == 16
    nd = parse_netdev('{"type": "stream", "id": "a", "server": true, "max-peers": 5, '
                      '"addr": {"type": "unix", "path": "x"}}')
    assert nd.max_peers == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("socket,id=a,listen=:1,max-peers=0", r"Parameter 'max-peers' expects a value in 1\.\.1048576 \(got '0'\)"),
        ("socket,id=a,listen=:1,max-peers=many", r"Parameter 'max-peers' expects a number \(got 'many'\)"),
        ("socket,id=a,connect=127.0.0.1:1,max-peers=2", "max-peers= is only valid with listen="),
        ("socket,id=a,mcast=230.0.0.1:1,max-peers=2", "max-peers= is only valid with listen="),
        ("stream,id=a,server=off,addr.type=unix,addr.path=x,max-peers=2", "max-peers= is only valid with server=on"),
    ],
)
def test_max_peers_is_checked(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_netdev(text)


def test_vde_netdev_and_its_guest_side():
    from vmlan.config.vde import VdeNetdev

    nd = parse_netdev("vde,id=s,sock=/tmp/sw,server=on")
    assert isinstance(nd, VdeNetdev) and nd.server and nd.mode == 0o600
    assert guest_netdev(nd) == "vde,id=n0,sock=/tmp/sw"
    assert parse_netdev("vde,id=c,sock=/tmp/sw,port=2") == VdeNetdev("c", 0, "/tmp/sw", False, 2)
    with pytest.raises(ValueError, match="a VDE client is not a link guests attach to"):
        guest_netdev(parse_netdev("vde,id=c,sock=/tmp/sw"))
    with pytest.raises(ConfigError) as err:
        parse_run_args(["-netdev", "vde,id=s,server=on"])
    assert str(err.value) == ("-netdev vde,id=s,server=on: Parameter 'sock' is missing "
                              "(server=on serves the control directory sock=DIR)")
