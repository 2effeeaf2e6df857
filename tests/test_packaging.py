"""The wheel is what admins install: it must carry the icons and the entry points."""

from __future__ import annotations

import zipfile


def test_wheel_ships_icons_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for app in ("xpra", "vnc", "tensorboard", "rstudio", "paraview"):
            assert f"hpc_proxies/icons/{app}.svg" in names
            assert f"hpc_proxies/{app}/__init__.py" in names
        assert "hpc_proxies/tensorboard/serve.py" in names  # run by TensorBoard's own Python
        assert "hpc_proxies/paraview/server.py" in names  # run by ParaView's own Python
        assert "hpc_proxies/jupyter/entrypoints.py" in names
        assert "hpc_proxies/launcher/__main__.py" in names  # python -m hpc_proxies.launcher
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "[jupyter_serverproxy_servers]" in text
    assert "xpra = hpc_proxies.jupyter.entrypoints:setup_xpra" in text
    assert "vnc = hpc_proxies.jupyter.entrypoints:setup_vnc" in text
    assert "tensorboard = hpc_proxies.jupyter.entrypoints:setup_tensorboard" in text
    assert "rstudio = hpc_proxies.jupyter.entrypoints:setup_rstudio" in text
    assert "paraview = hpc_proxies.jupyter.entrypoints:setup_paraview" in text
