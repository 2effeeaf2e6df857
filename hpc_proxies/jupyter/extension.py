"""The hpc-proxies server extension: the instance manager, its REST API and the route
of ``/<app>@<instance>/``, added to the Jupyter server when it starts.

jupyter-server-proxy loads the apps' entry points itself; this extension adds what it
lacks (list, stop, restart, logs, more instances, idle shutdown, streamed downloads).
Without it the apps still work, one instance each, every response buffered.
"""

from __future__ import annotations

import os

from tornado.ioloop import IOLoop

from .. import config
from ..slurmjob import JobClock, job_from_env
from . import api
from .instances import InstanceManager
from .serverproxy import MANAGER_SETTING, stream_first_instances


def _load_jupyter_server_extension(serverapp) -> None:
    web_app = serverapp.web_app
    manager = InstanceManager(config.load(), web_app.settings["base_url"])
    web_app.settings[MANAGER_SETTING] = manager
    job = job_from_env(os.environ)
    if job is not None:
        web_app.settings[api.JOB_CLOCK_SETTING] = JobClock(job)
    api.add_handlers(web_app, manager)
    # jupyter-server-proxy adds its routes after us (extensions load in name order);
    # this runs after all have loaded and before the server binds its socket.
    IOLoop.current().add_callback(stream_first_instances, web_app, manager.apps)
    IOLoop.current().add_callback(manager.start_idle_checks)
    serverapp.log.info("hpc-proxies: Running-panel API at %s%s/", manager.base_url, api.API)
