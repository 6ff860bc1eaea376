import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import flatten, parse_bool, parse_keyval, parse_qemuopts, parse_uint


def test_implied_type_and_pairs_in_order():
    assert parse_qemuopts("socket,id=a,listen=:8010") == [("type", "socket"), ("id", "a"), ("listen", ":8010")]


def test_double_comma_is_a_literal_comma():
    assert parse_qemuopts("filter-dump,file=/tmp/a,,b.pcap,id=x", "qom-type") == [
        ("qom-type", "filter-dump"),
        ("file", "/tmp/a,b.pcap"),
        ("id", "x"),
    ]


def test_bare_flag_means_on_and_repeats_are_kept():
    assert parse_qemuopts("user,restrict,hostfwd=a,hostfwd=b") == [
        ("type", "user"),
        ("restrict", "on"),
        ("hostfwd", "a"),
        ("hostfwd", "b"),
    ]


def test_keyval_builds_nested_dicts_and_last_repeat_wins():
    tree = parse_keyval("stream,id=s,addr.type=unix,addr.path=/x,,y,server=off,server=on")
    assert tree == {"type": "stream", "id": "s", "addr": {"type": "unix", "path": "/x,y"}, "server": "on"}
    assert flatten(tree)["addr.path"] == "/x,y"


def test_keyval_json_form():
    tree = parse_keyval('{"type":"stream","id":"s","server":true,"addr":{"type":"inet","host":"127.0.0.1","port":"5"}}')
    assert tree["server"] == "on" and tree["addr"]["port"] == "5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stream,id=a,addr", "Expected '=' after parameter 'addr'"),
        ("stream,id=a,addr.type=unix,addr=x", "Parameters 'addr.*' conflict with parameter 'addr'"),
        ("stream,id=a,a..b=1", "Invalid parameter 'a..b'"),
        ('{"type":', "JSON parse error"),
    ],
)
def test_keyval_errors(text, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace(".", r"\.")):
        parse_keyval(text)


def test_booleans_and_numbers():
    assert parse_bool("server", "yes") is True and parse_bool("server", "off") is False
    with pytest.raises(ConfigError, match="Parameter 'server' expects 'on' or 'off' \\(got 'maybe'\\)"):
        parse_bool("server", "maybe")
    assert parse_uint("maxlen", "0x10") == 16 and parse_uint("mode", "0700") == 0o700
    with pytest.raises(ConfigError, match="Parameter 'maxlen' expects a number"):
        parse_uint("maxlen", "ten")


values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=20)


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), values), min_size=1, max_size=6))
def test_qemuopts_round_trip(pairs):
    text = ",".join(f"{k}={v.replace(',', ',,')}" for k, v in pairs)
    assert parse_qemuopts(text, implied_key=None) == pairs


@given(st.text(max_size=60))
def test_parsers_raise_only_config_errors(text):
    for parse in (parse_qemuopts, parse_keyval):
        with contextlib.suppress(ConfigError):
            parse(text)
