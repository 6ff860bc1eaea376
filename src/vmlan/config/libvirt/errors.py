"""Errors of the libvirt XML layer: one hierarchy under :class:`vmlan.config.errors.ConfigError`.

libvirt shows an error as its code's prefix followed by the message ("XML error: ...", "unsupported
configuration: ...", "internal error: ..."); virsh prints that after "error: ". The classes below carry
the same prefixes so a message reads exactly as libvirt 9.0.0 would print it. Every message is one line:
control characters taken from the input (a newline in a name, say) are shown escaped.
"""

from __future__ import annotations

from vmlan.config.errors import ConfigError


def one_line(text: str) -> str:
    """``text`` with control characters escaped, so an echoed value cannot break the line."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


class LibvirtError(ConfigError):
    """Base of the layer. ``prefix`` is libvirt's text for the error code, ``detail`` the message alone."""

    prefix = ""

    def __init__(self, detail: str) -> None:
        self.detail = one_line(detail).rstrip()
        super().__init__(self.prefix + self.detail)


class XMLSyntaxError(LibvirtError):
    """Not well-formed XML, or XML vmlan refuses to read (a DOCTYPE, entities, too large)."""


class XMLError(LibvirtError):
    """libvirt's VIR_ERR_XML_ERROR: a missing or malformed element or attribute."""

    prefix = "XML error: "


class XMLDetailError(LibvirtError):
    """libvirt's VIR_ERR_XML_DETAIL (and system errors): shown without a prefix."""


class UnsupportedConfigError(LibvirtError):
    """libvirt's VIR_ERR_CONFIG_UNSUPPORTED: well-formed, but a combination libvirt refuses."""

    prefix = "unsupported configuration: "


class InternalError(LibvirtError):
    """libvirt's VIR_ERR_INTERNAL_ERROR, which it uses for address range checks and bad UUIDs."""

    prefix = "internal error: "


class InvalidArgError(LibvirtError):
    """libvirt's VIR_ERR_INVALID_ARG."""

    prefix = "invalid argument: "


class NotSupportedByVmlanError(UnsupportedConfigError):
    """Something libvirt accepts that vmlan does not do (yet): other interface types, bandwidth, ..."""


class NeedsNetworkError(LibvirtError):
    """An interface that must be attached to a running network (or host device) and no resolver could."""
