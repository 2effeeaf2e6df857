"""pvserver's own code, run inside a Python that imports ParaView, with no secret in argv.

    python3 server.py --connect-id-file FILE [--pv-arg ARG ...]

ParaView 5.11's pvserver reads its connect-id only from its command line, and every
user of a login node can read every command line in /proc. This script runs the same
server loop as the pvserver executable (``vtkInitializationHelper`` as a server,
``vtkPVSessionServer.Connect``, then the network access manager's event loop), but
hands ParaView its options in memory: the connect-id comes from a 0600 file.

It also skips MPI initialisation for a serial server (``--no-mpi``): Debian's pvserver
initialises OpenMPI, which opens a TCP listener of its own on every interface. Under
``mpiexec`` (the ``mpiexec`` engine) every rank runs this script: rank 0 serves the
client and says what happens; the others serve rank 0.

It prints one line per state change, read by the ParaView service::

    HPC-PROXIES-PVSERVER listening <port>
    HPC-PROXIES-PVSERVER connected
    HPC-PROXIES-PVSERVER exiting <code>

With ``--reverse HOST:PORT`` (the ``slurm`` engine) pvserver listens nowhere: rank 0
connects to the service's rendezvous at HOST:PORT (:mod:`.rendezvous`), says
``dialled`` once that connection is accepted, and serves the client joined to it.

Standard library and ParaView only: it runs in ParaView's Python, not in the
Jupyter server's.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

MARK = "HPC-PROXIES-PVSERVER"
EXIT_NO_PARAVIEW = 3
EXIT_NO_PORT = 4


def say(*words: object) -> None:
    print(MARK, *words, flush=True)


#: Where the job's GPUs are named (Slurm sets them for a job given GPUs), and where a
#: rank finds its index among the ranks on its node (OpenMPI, MPICH, srun).
GPU_LISTS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
LOCAL_RANKS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


def egl_device(env: dict, default: int) -> int:
    """The EGL device this rank renders on: in a job given GPUs, the one its index on the
    node picks among them (ranks on a node share them round-robin); else ``default``."""
    for name in GPU_LISTS:
        devices = [d for d in env.get(name, "").split(",") if d.strip().isdigit()]
        if devices:
            local = next((env[n] for n in LOCAL_RANKS if env.get(n, "").isdigit()), "0")
            return int(devices[int(local) % len(devices)])
    return default


def free_port() -> int:
    """A TCP port nobody listens on now (ParaView binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connect-id-file", required=True)
    parser.add_argument("--pv-arg", action="append", default=[], help="one more pvserver option")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--reverse", default="", help="HOST:PORT to connect back to")
    parser.add_argument(
        "--egl-device",
        type=int,
        default=None,
        help="render with EGL: this device, or the job's GPU",
    )
    args = parser.parse_args(argv)
    if args.egl_device is not None:
        device = egl_device(dict(os.environ), args.egl_device)
        args.pv_arg += ["--force-offscreen-rendering", f"--displays={device}"]

    try:
        from paraview.modules.vtkPVVTKExtensionsCore import vtkStringList
        from paraview.modules.vtkRemotingApplication import vtkInitializationHelper
        from paraview.modules.vtkRemotingCore import vtkProcessModule
        from paraview.modules.vtkRemotingServerManager import vtkPVSessionServer
    except ImportError as err:
        sys.stderr.write(
            f"ParaView's Python modules cannot be imported by {sys.executable}: {err}\n"
            "Install them (Debian/Ubuntu: apt install python3-paraview), or point "
            "[apps.paraview] executable at a Python that has them.\n"
        )
        return EXIT_NO_PARAVIEW

    with open(args.connect_id_file) as f:
        connect_id = int(f.read().strip())
    if args.reverse:
        host, _, port_text = args.reverse.rpartition(":")
        port = int(port_text)
        direction = ["--reverse-connection", f"--client-host={host}"]
    else:
        port = args.port or free_port()
        direction = []
    options = vtkStringList()
    for option in (
        "pvserver",
        f"--connect-id={connect_id}",
        f"--server-port={port}",
        *direction,
        "--disable-registry",
        *args.pv_arg,
    ):
        options.AddString(option)
    if not vtkInitializationHelper.Initialize(options, vtkProcessModule.PROCESS_SERVER):
        sys.stderr.write("ParaView could not initialise as a server (see above)\n")
        return 1
    # ParaView's logger catches SIGTERM and prints a 25-line stack trace into the log at
    # every stop; being stopped is normal here, and the service cleans up after us.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    process_module = vtkProcessModule.GetProcessModule()
    controller = process_module.GetGlobalController()
    # Under mpiexec, rank 0 serves the client; the other ranks (satellites) serve rank 0.
    rank = controller.GetLocalProcessId() if controller is not None else 0
    session = vtkPVSessionServer()
    if rank == 0 and not args.reverse:
        say("listening", port)
    code = 0
    if session.Connect():
        process_module.RegisterSession(session)
        if rank == 0:
            say("dialled" if args.reverse else "connected")
            network = process_module.GetNetworkAccessManager()
            while network.ProcessEvents(0) != -1:
                pass
        else:
            controller.ProcessRMIs()
        process_module.UnRegisterSession(session)
    else:
        code = EXIT_NO_PORT
    if rank == 0:
        say("exiting", code)
    del session
    vtkInitializationHelper.Finalize()
    return code


if __name__ == "__main__":
    sys.exit(main())
