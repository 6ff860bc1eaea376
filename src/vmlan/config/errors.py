"""Errors of the configuration layer.

Every bad option ends up as one line naming the option and the bad value, and exit status 2;
the command line front end prefixes it with the option text it came from, as QEMU does.
"""


class ConfigError(Exception):
    """A configuration value that vmlan refuses, with a message fit for one line."""
