"""Reading XML safely and writing it the way libvirt's formatter does.

Reading: lxml (libxml2, the parser libvirt uses) with entity resolution, the network, DTD loading
and huge trees all off. A document with a DOCTYPE is refused outright, before libxml2 reads it:
libvirt's XML never needs one, and without a DTD there are no entities to expand (no billion laughs)
and no external entities to fetch (no XXE); an undefined ``&name;`` is a plain well-formedness error.
Input is capped at 10 MiB, virsh's own limit for an XML file (VSH_MAX_XML_FILE). A syntax error becomes
one line naming the document, line and column, e.g.
``(network_definition):4:1: Unescaped '<' not allowed in attributes values`` (libvirt prints the same
first libxml2 error, then the offending line and a caret on two more lines).

Lookups mirror libvirt's two styles: ``virXPathString("string(./x/@a)")`` treats an empty value as
absent (:func:`xpath_attr`), while ``virXMLPropString`` keeps it (:func:`prop`).

Writing: :class:`Writer` produces libvirt's layout: two-space indentation, single-quoted attributes,
empty elements as ``<x/>``, and values escaped as virBufferEscapeString does (``< > & ' "`` as entities,
other control characters except tab/newline/CR dropped).
"""

from __future__ import annotations

import re
from typing import Final

from lxml import etree

from vmlan.config.libvirt.errors import XMLError, XMLSyntaxError

MAX_XML_BYTES: Final = 10 * 1024 * 1024

_NO_DOCTYPE = "a DOCTYPE is not accepted (libvirt XML has no DTD, so no entities to declare)"
_POSITION_SUFFIX = re.compile(r", line \d+, column \d+\Z")


def parse_document(text: str | bytes, docname: str, root: str | tuple[str, ...]) -> etree._Element:
    """Parse ``text`` into its root element, which must be named ``root`` (or one of them)."""
    try:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as exc:  # a lone surrogate in a str
        raise XMLSyntaxError(f"{docname}: not a Unicode string (a lone surrogate at offset {exc.start})") from None
    if len(data) > MAX_XML_BYTES:
        raise XMLSyntaxError(f"{docname}: XML document too large ({len(data)} bytes, at most {MAX_XML_BYTES})")
    doctype = data.find(b"<!DOCTYPE")
    if doctype >= 0:  # before libxml2 sees it, so no entity is ever declared, let alone expanded
        line = data.count(b"\n", 0, doctype) + 1
        column = doctype - (data.rfind(b"\n", 0, doctype) + 1) + 1
        raise XMLSyntaxError(f"{docname}:{line}:{column}: {_NO_DOCTYPE}")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        element = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        message = _POSITION_SUFFIX.sub("", str(exc.msg or "malformed XML"))
        raise XMLSyntaxError(f"{docname}:{line}:{column}: {message}") from None
    except (ValueError, TypeError) as exc:  # lxml's refusals that are not syntax errors
        raise XMLSyntaxError(f"{docname}: {exc}") from None
    tree = element.getroottree()
    if tree.docinfo.internalDTD is not None:
        raise XMLSyntaxError(f"{docname}: {_NO_DOCTYPE}")
    names = (root,) if isinstance(root, str) else root
    if element.tag not in names:
        name = element.tag if isinstance(element.tag, str) else "?"
        raise XMLError(f"expecting root element of '{names[0]}', not '{local_name(name)}'")
    return element


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def child(element: etree._Element, name: str) -> etree._Element | None:
    """The first child element called ``name`` (libvirt's ``virXPathNode("./name")``)."""
    for node in element:
        if node.tag == name:
            return node
    return None


def children(element: etree._Element, name: str) -> list[etree._Element]:
    return [node for node in element if node.tag == name]


def prop(element: etree._Element | None, name: str) -> str | None:
    """An attribute as virXMLPropString reads it: absent is None, empty stays ''."""
    if element is None:
        return None
    value = element.get(name)
    return None if value is None else str(value)


def xpath_attr(element: etree._Element, path: tuple[str, ...], name: str) -> str | None:
    """``string(./a/b/@name)`` as virXPathString reads it: the first match, and '' counts as absent."""
    node: etree._Element | None = element
    for step in path:
        assert node is not None
        node = child(node, step)
        if node is None:
            return None
    value = prop(node, name)
    return value or None


def text_of(element: etree._Element) -> str:
    """The text content of an element (child text included), as ``string(./x)`` gives it."""
    return "".join(str(t) for t in element.itertext())


def required_prop(element: etree._Element, name: str) -> str:
    value = prop(element, name)
    if value is None:
        raise XMLError(f"Missing required attribute '{name}' in element '{element.tag}'")
    return value


_STRTOL_RE = re.compile(r"\s*[+-]?[0-9]+\Z")


def parse_int(text: str) -> int | None:
    """virStrToLong_i: optional leading blanks and sign, decimal digits, nothing after."""
    if not _STRTOL_RE.match(text):
        return None
    return int(text)


def prop_int(element: etree._Element, name: str, *, required: bool = False, nonzero: bool = False,
             unsigned: bool = False) -> int | None:
    """virXMLPropInt/virXMLPropUInt with VIR_XML_PROP_REQUIRED / VIR_XML_PROP_NONZERO, same messages."""
    value = prop(element, name)
    if value is None:
        if required:
            raise XMLError(f"Missing required attribute '{name}' in element '{element.tag}'")
        return None
    number = parse_int(value)
    if number is None or (unsigned and number < 0):
        kind = "non-negative integer" if unsigned else "integer"
        raise XMLError(
            f"Invalid value for attribute '{name}' in element '{element.tag}': '{value}'. Expected {kind} value"
        )
    if (unsigned and number > 0xFFFFFFFF) or (not unsigned and not -(2**31) <= number < 2**31):
        kind = "non-negative integer" if unsigned else "integer"
        raise XMLError(
            f"Invalid value for attribute '{name}' in element '{element.tag}': '{value}'. Expected {kind} value"
        )
    if nonzero and number == 0:
        raise XMLError(f"Invalid value for attribute '{name}' in element '{element.tag}': Zero is not permitted")
    return number


def prop_enum(element: etree._Element | None, name: str, values: tuple[str, ...], *,
              required: bool = False) -> str | None:
    """virXMLPropEnum with VIR_XML_PROP_NONZERO: one of ``values`` (exact case), else libvirt's message."""
    if element is None:
        return None
    value = prop(element, name)
    if value is None:
        if required:
            raise XMLError(f"Missing required attribute '{name}' in element '{element.tag}'")
        return None
    if value not in values:
        raise XMLError(f"Invalid value for attribute '{name}' in element '{element.tag}': '{value}'.")
    return value


def prop_tristate(element: etree._Element | None, name: str) -> bool | None:
    """virXMLPropTristateBool: 'yes'/'no', absent is None."""
    value = prop_enum(element, name, ("yes", "no"))
    return None if value is None else value == "yes"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


_FORBIDDEN = {chr(c) for c in range(1, 0x20)} - {"\t", "\n", "\r"}
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;"}


def escape(value: str) -> str:
    """virBufferEscapeString: the five XML specials as entities, other control characters dropped."""
    return "".join(_ENTITIES.get(ch, ch) for ch in value if ch not in _FORBIDDEN)


class Writer:
    """An indented text builder for libvirt's XML layout (element order is the caller's business)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0

    @staticmethod
    def _attrs(attrs: tuple[tuple[str, str | int | None], ...]) -> str:
        return "".join(f" {name}='{escape(str(value))}'" for name, value in attrs if value is not None)

    def empty(self, tag: str, *attrs: tuple[str, str | int | None], always: bool = True) -> None:
        """``<tag a='v'/>``; with ``always=False`` nothing when no attribute is set (virXMLFormatElement)."""
        text = self._attrs(attrs)
        if text or always:
            self._lines.append("  " * self._depth + f"<{tag}{text}/>")

    def text(self, tag: str, value: str) -> None:
        self._lines.append("  " * self._depth + f"<{tag}>{escape(value)}</{tag}>")

    def open(self, tag: str, *attrs: tuple[str, str | int | None]) -> None:
        self._lines.append("  " * self._depth + f"<{tag}{self._attrs(attrs)}>")
        self._depth += 1

    def close(self, tag: str) -> None:
        self._depth -= 1
        self._lines.append("  " * self._depth + f"</{tag}>")

    def result(self) -> str:
        return "\n".join(self._lines) + "\n"
