"""vmlan: QEMU's and libvirt's virtual networking model as a standalone toolkit and daemon."""

__version__ = "0.1.0"
