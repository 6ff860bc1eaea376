"""``-object filter-netem`` option parsing and its one-line errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmlan.config.errors import ConfigError
from vmlan.config.filters import NetemConfig, parse_filter_netem
from vmlan.config.qemuopts import parse_qemuopts


def parse(text):
    return parse_filter_netem(parse_qemuopts(text, implied_key="qom-type"))


def test_defaults():
    cfg = parse("filter-netem,id=n0,netdev=vm1")
    assert cfg == NetemConfig("n0", "vm1")
    assert (cfg.loss, cfg.delay, cfg.limit, cfg.queue, cfg.seed) == (0.0, 0.0, 1000, "all", None)
    assert cfg.rx and cfg.tx


def test_every_option_with_decimals():
    cfg = parse(
        "filter-netem,id=n0,netdev=vm1,loss=2.5,delay=10,jitter=.5,duplicate=1.,reorder=25,"
        "rate=0.75,limit=50,queue=rx,seed=0x10"
    )
    assert cfg == NetemConfig("n0", "vm1", 2.5, 10.0, 0.5, 1.0, 25.0, 0.75, 50, "rx", 16)
    assert cfg.rx and not cfg.tx
    assert parse("filter-netem,id=n,netdev=v,queue=tx").tx and not parse("filter-netem,id=n,netdev=v,queue=tx").rx


def test_bounds_are_inclusive():
    cfg = parse("filter-netem,id=n,netdev=v,loss=100,duplicate=0,delay=3600000,jitter=0,rate=1000000,limit=1000000")
    assert (cfg.loss, cfg.delay, cfg.rate, cfg.limit) == (100.0, 3600000.0, 1000000.0, 1000000)


def test_qom_type_key_and_repeats_keep_the_last():
    assert parse("qom-type=filter-netem,id=n,netdev=v,loss=1,loss=3").loss == 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("filter-netem,id=n,netdev=v,loss=150", "Parameter 'loss' expects a percentage 0..100 (got '150')"),
        ("filter-netem,id=n,netdev=v,loss=-1", "Parameter 'loss' expects a percentage 0..100 (got '-1')"),
        ("filter-netem,id=n,netdev=v,loss=2%", "Parameter 'loss' expects a percentage 0..100 (got '2%')"),
        ("filter-netem,id=n,netdev=v,duplicate=nan", "Parameter 'duplicate' expects a percentage 0..100 (got 'nan')"),
        ("filter-netem,id=n,netdev=v,reorder=1e1,delay=5",
         "Parameter 'reorder' expects a percentage 0..100 (got '1e1')"),
        ("filter-netem,id=n,netdev=v,delay=10ms", "Parameter 'delay' expects milliseconds 0..3600000 (got '10ms')"),
        ("filter-netem,id=n,netdev=v,jitter=inf", "Parameter 'jitter' expects milliseconds 0..3600000 (got 'inf')"),
        ("filter-netem,id=n,netdev=v,delay=3600001",
         "Parameter 'delay' expects milliseconds 0..3600000 (got '3600001')"),
        ("filter-netem,id=n,netdev=v,rate=", "Parameter 'rate' expects megabits per second 0..1000000 (got '')"),
        ("filter-netem,id=n,netdev=v,rate=10mbit",
         "Parameter 'rate' expects megabits per second 0..1000000 (got '10mbit')"),
        ("filter-netem,id=n,netdev=v,limit=0", "Parameter 'limit' expects a value in 1..1000000 (got '0')"),
        ("filter-netem,id=n,netdev=v,limit=many", "Parameter 'limit' expects a number (got 'many')"),
        ("filter-netem,id=n,netdev=v,seed=-3",
         "Parameter 'seed' expects a value in 0..18446744073709551615 (got '-3')"),
        ("filter-netem,id=n,netdev=v,queue=both",
         "Parameter 'queue' does not accept value 'both' (expected all, rx or tx)"),
        ("filter-netem,id=n,netdev=v,reorder=25",
         "Parameter 'reorder' needs delay > 0 (got 'reorder=25' and no delay): as with tc-netem, reordered frames "
         "are the ones sent without the delay"),
        ("filter-netem,id=n,netdev=v,reorder=25,delay=0,jitter=5",
         "Parameter 'reorder' needs delay > 0 (got 'reorder=25' with 'delay=0'): as with tc-netem, reordered "
         "frames are the ones sent without the delay"),
        ("filter-netem,id=n,netdev=v,corrupt=1", "Property 'filter-netem.corrupt' not found"),
        ("filter-netem,id=n,netdev=v,file=x", "Property 'filter-netem.file' not found"),
        ("filter-netem,netdev=v", "Parameter 'id' is missing"),
        ("filter-netem,id=n", "Parameter 'netdev' is missing"),
        ("filter-netem,id=1n,netdev=v", "Parameter 'id' expects an identifier (got '1n' for object)"),
        ("filter-dump,id=n,netdev=v",
         "Parameter 'qom-type' does not accept value 'filter-dump' (expected filter-netem)"),
    ],
)
def test_errors_name_the_option_and_value(text, message):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_reorder_zero_needs_no_delay():
    assert parse("filter-netem,id=n,netdev=v,reorder=0").reorder == 0.0


@given(st.text(max_size=12))
def test_any_loss_value_parses_or_raises_config_error(value):
    try:
        cfg = parse_filter_netem([("qom-type", "filter-netem"), ("id", "n"), ("netdev", "v"), ("loss", value)])
    except ConfigError:
        return
    assert 0.0 <= cfg.loss <= 100.0


@given(st.decimals(min_value=0, max_value=100, places=3))
def test_decimal_percentages_round_trip(value):
    assert parse(f"filter-netem,id=n,netdev=v,loss={value}").loss == pytest.approx(float(value))
