"""Errors of the I/O layer: a link that cannot be set up (bind, connect). Frames never raise."""


class LinkError(Exception):
    """A link could not be opened; the message names the netdev and the OS's reason."""
