"""Moved to :mod:`hpc_proxies.jupyter.serverproxy` (what runs inside the Jupyter
server); this name keeps working for sites that build their own tiles."""

from .jupyter.serverproxy import *  # noqa: F403
