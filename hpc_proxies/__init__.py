"""hpc-proxies: jupyter-server-proxy plugins that put HPC apps behind the user's Jupyter login."""

__version__ = "0.1.0"
