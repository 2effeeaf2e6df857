"""The per-launch supervisor that jupyter-server-proxy starts in place of an app.

    python -m hpc_proxies.launcher --app xpra --socket DIR/socket --prefix /user/me/xpra/

jupyter-server-proxy proxies well but supervises poorly: it signals only its direct
child, keeps an app that exited cleanly as "running" until Jupyter restarts, notices a
crash during start-up only at the end of its timeout, shows a blank page while an app
starts, and never removes its socket directories. This small process closes all of
those gaps in one place, and stays up for as long as the Jupyter server does:

* it serves a progress page on the launch's socket at once, starts the app on a
  private socket beside it, and, when the app answers, atomically renames the app's
  socket over its own, so the proxy's next request reaches the app (:mod:`.handover`);
* when the app exits it takes the socket back: the next request starts the app again,
  and a start-up failure becomes a readable page with the app's last output lines;
* the app runs in a session of its own, and this process is a child subreaper, so
  stopping reaches every descendant (:mod:`.processes`);
* on SIGTERM/SIGINT/SIGHUP, or when the Jupyter server dies, it stops everything and
  removes the runtime directory;
* an app with URL parameters (``/tensorboard/?logdir=DIR``) is started with the value a
  request chose and relaunched when a request chooses another (:mod:`.params`).

Its parts, each with one job:

* :mod:`.lifecycle`: states, events and effects, and the one step function (no I/O);
* :mod:`.supervisor`: the :class:`Launcher`, which feeds the lifecycle and carries out
  its effects; :mod:`.failures` words what goes wrong as problems;
* :mod:`.processes` and :mod:`.engines`: the process group and where processes run;
* :mod:`.web` and :mod:`.handover`: the HTTP side on aiohttp, and the launch socket;
* :mod:`.prepare`, :mod:`.readiness` and :mod:`.params`: one start's files, when the
  app is ready, and its URL parameters.
"""

import importlib

#: Public names and the modules that hold them, imported on first use (PEP 562): the
#: supervisor binds its socket before it imports aiohttp and the rest
#: (``__main__``), so jupyter-server-proxy's first readiness check finds it at once.
_EXPORTS = {
    "APP_DIR": "..layout",
    "APP_SOCKET": "..layout",
    "CONTROL_SOCKET": "..layout",
    "LOG_LINE_MAX": ".supervisor",
    "MAY_RELAUNCH": "..origins",
    "Launcher": ".supervisor",
    "prepare_start": ".prepare",
    "request_origin": "..origins",
    "start_env": ".prepare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
