"""Safe XML reading: no entity expansion, no external entities, one-line syntax errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlan.config.errors import ConfigError
from vmlan.config.libvirt import LibvirtError, XMLError, XMLSyntaxError, parse_interface, parse_network
from vmlan.config.libvirt.xmlio import MAX_XML_BYTES, Writer, escape


def test_unterminated_attribute_names_line_and_column() -> None:
    doc = '<network>\n  <name>x</name>\n  <mac address="11:22:33:44:55:66:/>\n</network>\n'
    with pytest.raises(XMLSyntaxError) as err:
        parse_network(doc)
    assert str(err.value) == "(network_definition):4:1: Unescaped '<' not allowed in attributes values"
    assert isinstance(err.value, ConfigError)


def test_docname_is_the_file_name_when_given() -> None:
    with pytest.raises(XMLSyntaxError, match=r"^/etc/x\.xml:1:\d+: "):
        parse_network("<network><name>x</name>", docname="/etc/x.xml")


def test_billion_laughs_is_refused_before_parsing() -> None:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    doc = (f'<?xml version="1.0"?>\n<!DOCTYPE network [<!ENTITY l0 "lol">{entities}]>'
           "<network><name>&l9;</name></network>")
    with pytest.raises(XMLSyntaxError, match=r"^\(network_definition\):2:1: a DOCTYPE is not accepted"):
        parse_network(doc)


def test_external_entity_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    doc = (f'<!DOCTYPE network [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           "<network><name>&xxe;</name></network>")
    with pytest.raises(XMLSyntaxError) as err:
        parse_network(doc)
    assert "TOPSECRET" not in str(err.value)


def test_doctype_hidden_from_the_byte_scan_is_still_refused() -> None:
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE network><network><name>a</name></network>'
    with pytest.raises(XMLSyntaxError, match="DOCTYPE"):
        parse_network(doc.encode("utf-16"))


def test_undefined_entity_is_a_syntax_error() -> None:
    with pytest.raises(XMLSyntaxError, match=r":1:\d+: Entity 'x' not defined$"):
        parse_network("<network><name>&x;</name></network>")


def test_predefined_entities_and_character_references_work() -> None:
    net = parse_network("<network><name>a&amp;b&#x41;&lt;</name></network>")
    assert net.name == "a&bA<"
    assert "<name>a&amp;bA&lt;</name>" in net.to_xml()


def test_size_cap() -> None:
    doc = "<network><name>x</name>" + " " * MAX_XML_BYTES + "</network>"
    with pytest.raises(XMLSyntaxError, match="too large"):
        parse_network(doc)


@pytest.mark.parametrize(
    "doc", ["", "   ", "<a/><b/>", "\xff", "<network", "<?xml version='1.0' encoding='bogus'?><a/>"]
)
def test_malformed_documents_are_one_line(doc: str) -> None:
    with pytest.raises(XMLSyntaxError) as err:
        parse_network(doc)
    assert "\n" not in str(err.value)


def test_encoding_declaration_in_a_str_is_fine() -> None:
    assert parse_network("<?xml version='1.0' encoding='UTF-8'?><network><name>x</name></network>").name == "x"


def test_wrong_root_element() -> None:
    with pytest.raises(XMLError) as err:
        parse_network("<netwerk><name>a</name></netwerk>")
    assert str(err.value) == "XML error: expecting root element of 'network', not 'netwerk'"
    with pytest.raises(XMLError, match="expecting root element of 'interface', not 'network'"):
        parse_interface("<network/>")


def test_control_characters_in_messages_are_escaped() -> None:
    with pytest.raises(LibvirtError) as err:
        parse_network("<network><name>a\nb</name></network>")
    assert str(err.value) == "invalid char in name: \\n"


def test_writer_escapes_like_libvirt() -> None:
    assert escape("a<b>&'\"\x01\tz") == "a&lt;b&gt;&amp;&apos;&quot;\tz"
    w = Writer()
    w.open("a", ("x", "1"), ("y", None))
    w.empty("b", ("k", "v'"))
    w.empty("c", ("k", None), always=False)
    w.text("d", "<t>")
    w.close("a")
    assert w.result() == "<a x='1'>\n  <b k='v&apos;'/>\n  <d>&lt;t&gt;</d>\n</a>\n"
