# JupyterHub with batchspawner's SlurmSpawner: each user's JupyterLab, with the
# hpc-proxies tiles, runs as a Slurm job on a compute node, as the user.
#
# The deployment test tier (tests/deployment/) loads this file unchanged and adds only
# what a test machine needs on top (its ports, a test authenticator, its partition):
# what is here is what CI runs. docs/admins/jupyterhub.md explains each setting.
#
# Where paths differ at your site, set the environment variables below for the hub,
# or edit the defaults.
import os

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

#: The site venv on the compute nodes: built from the system Python (/usr/bin/python3),
#: never from a Python under a home directory that only its owner can enter, with
#: jupyterlab, hpc-proxies and batchspawner installed in it.
site_venv = os.environ.get("HPC_PROXIES_SITE_VENV", "/opt/hpc-proxies/venv")
#: The hpc-proxies site file every user's server reads.
site_config = os.environ.get("HPC_PROXIES_CONFIG", "/etc/hpc-proxies/config.toml")

c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"

# What the job runs. batchspawner's own wrapper (batchspawner-singleuser) tells the hub a
# random port and leaves the server listening on every address of the node; hpc-proxies'
# listens on the address the hub connects to (the node's host name; --ip to choose
# another), on a port of the site's range.
c.Spawner.cmd = [f"{site_venv}/bin/jupyterhub-singleuser"]
c.SlurmSpawner.batchspawner_singleuser_cmd = (
    f"{site_venv}/bin/hpc-proxies batchspawner-singleuser --port-range 40000-40999"
)
c.Spawner.default_url = "/lab"

# The job's environment: the site venv first on PATH (the tiles find hpc-proxies'
# helpers and TensorBoard there, a terminal finds `hpc-proxies`), the site file, and
# no hwloc GL probing (it opens every X display on the node, other users' desktops
# included, which slows MPI start-up and logs "Authorization required").
c.Spawner.environment = {
    "PATH": f"{site_venv}/bin:/usr/local/bin:/usr/bin:/bin",
    "HPC_PROXIES_CONFIG": site_config,
    "HWLOC_COMPONENTS": "-gl",
}

# The job itself: partition, walltime, CPUs. A queued job waits here: the hub shows
# "Pending in queue..." until Slurm starts it, then waits for the server.
c.SlurmSpawner.req_partition = os.environ.get("HPC_PROXIES_PARTITION", "interactive")
c.SlurmSpawner.req_runtime = "8:00:00"
c.SlurmSpawner.req_nprocs = "2"
c.SlurmSpawner.req_memory = ""  # e.g. "8G"; empty: the partition's default
c.Spawner.start_timeout = 600  # queue wait included
c.Spawner.http_timeout = 120  # from the job running to the server answering

# The hub and its proxy listen where the site's front end reaches them; the hub's API
# must be reachable from the compute nodes (JUPYTERHUB_API_URL in the job).
c.JupyterHub.bind_url = "http://0.0.0.0:8000"
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
