"""What runs inside the Jupyter server: the entry points and the server-proxy adapter.

jupyter-server-proxy loads :mod:`.entrypoints` (group ``jupyter_serverproxy_servers``)
when the server starts; each entry point returns the server dict that
:mod:`.serverproxy` builds from an app's declaration. Nothing here starts a process
or makes a file at load time: a launch runs ``python -m hpc_proxies.launcher``, the
per-launch supervisor, in its own process.
"""
