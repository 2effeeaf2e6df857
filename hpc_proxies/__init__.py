"""hpc-proxies: jupyter-server-proxy plugins that put HPC apps behind the user's Jupyter login."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension (enabled by ``jupyter_server_config.d/hpc_proxies.json``)."""
    return [{"module": "hpc_proxies.jupyter.extension"}]
