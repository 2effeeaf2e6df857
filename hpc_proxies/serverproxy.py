"""Moved to :mod:`hpc_proxies.jupyter.serverproxy` (what runs inside the Jupyter
server); this name keeps working for sites that build their own tiles."""

from .jupyter.serverproxy import *  # noqa: F403
from .jupyter.serverproxy import (  # noqa: F401
    AppServerProxy,
    InvalidServerProcess,
    inject_into_head,
    redirect_to_this_host,
    server_process,
    template_literal,
    validate_server_process,
)
