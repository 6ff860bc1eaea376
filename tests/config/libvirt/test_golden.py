"""Golden files (libvirt's own tests are shaped the same way: *.xml -> *.args, xml2xml, *.err)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.libvirt.golden import DATA, inputs, render
from vmlan.config.libvirt import interfaces_to_xml, parse_args, parse_interfaces, parse_network

CASES = inputs()


def test_every_input_has_its_outputs() -> None:
    assert len(CASES) >= 50
    for src in CASES:
        name = src.name.removesuffix(".xml")
        if name.endswith("-invalid"):
            assert (DATA / f"{name}.err").exists(), name
        elif name.startswith("net-"):
            assert (DATA / f"{name}.out.xml").exists() and (DATA / f"{name}.live.xml").exists(), name
        else:
            assert (DATA / f"{name}.out.xml").exists() and (DATA / f"{name}.args").exists(), name
    for out in DATA.iterdir():
        if out.suffix in (".args", ".err") or out.name.endswith((".out.xml", ".live.xml")):
            stem = out.name.split(".")[0]
            assert (DATA / f"{stem}.xml").exists(), f"orphan golden file {out.name}"


@pytest.mark.parametrize("src", CASES, ids=[p.name for p in CASES])
def test_golden(src: Path) -> None:
    outputs = render(src)
    invalid = src.name.endswith("-invalid.xml")
    assert all(name.endswith(".err") for name in outputs) == invalid, outputs
    for name, content in outputs.items():
        assert content == (DATA / name).read_text(), name
        if name.endswith(".err"):
            assert content.count("\n") == 1


@pytest.mark.parametrize("src", [p for p in CASES if not p.name.startswith("net-") and "invalid" not in p.name],
                         ids=lambda p: p.name)
def test_round_trip_is_a_fixed_point(src: Path) -> None:
    """Parsing libvirt's own output gives the same output again (what virsh edit relies on)."""
    out = (DATA / src.name.replace(".xml", ".out.xml")).read_text()
    wrapped = f"<domain><devices>{out}</devices></domain>"
    assert interfaces_to_xml(parse_interfaces(wrapped)) == out


@pytest.mark.parametrize("src", [p for p in CASES if p.name.startswith("net-") and "invalid" not in p.name],
                         ids=lambda p: p.name)
def test_network_round_trip_is_a_fixed_point(src: Path) -> None:
    for suffix in (".out.xml", ".live.xml"):
        out = (DATA / src.name.replace(".xml", suffix)).read_text()
        assert parse_network(out).to_xml() == out


def test_args_files_are_shell_words() -> None:
    for args in DATA.glob("*.args"):
        words = parse_args(args.read_text())
        assert len(words) % 2 == 0 and words, args.name
        assert set(words[0::2]) <= {"-netdev", "-device"}, args.name
        assert not any(w.startswith("-") for w in words[1::2]), args.name
