"""The ParaView tile's pages: the live status page, and the page of a view that is gone."""

from __future__ import annotations

from html import escape

from ..pages import document, home_url

SNIPPET = """import hpc_proxies.paraview as pvh
from paraview.simple import *

pvh.connect()
Show(Sphere())
pvh.show()"""


def status_page(prefix: str) -> str:
    """Polls ``api/status`` every second; the buttons post to ``api/stop|restart``
    with the Jupyter server's XSRF token (a cookie-authenticated POST needs it)."""
    home = escape(home_url(prefix))
    script = """
<script>
(function () {
  const $ = (id) => document.getElementById(id);
  const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
  const labels = {starting: 'Starting…', running: 'Running', stopped: 'Stopped',
                  failed: 'Failed', stopping: 'Stopping…'};
  function uptime(s) {
    if (s === null) return '-';
    const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = Math.floor(s % 60);
    return (h ? h + ' h ' : '') + (h || m ? m + ' min ' : '') + r + ' s';
  }
  async function refresh() {
    let info;
    try {
      const r = await fetch('api/status', {cache: 'no-store', credentials: 'same-origin'});
      info = await r.json();
    } catch (e) { setTimeout(refresh, 1000); return; }
    $('state').textContent = labels[info.state] || info.state;
    $('state').className = 'state ' + info.state;
    $('spinner').hidden = !(info.state === 'starting' || info.state === 'stopping');
    $('message').textContent = info.message;
    $('ranks').textContent = info.ranks || '-';
    $('host').textContent = info.host + (info.port ? ' (port ' + info.port + ')' : '');
    $('uptime').textContent = uptime(info.uptime);
    $('client').textContent = info.client_connected ? 'connected' : 'none';
    $('rendering').textContent = info.rendering + (info.display ? ' ' + info.display : '');
    $('network').textContent = info.network || '-';
    const refused = info.refused || {total: 0, latest: []};
    $('refused-row').hidden = !refused.total;
    if (refused.total) {
      const last = refused.latest[0];
      const who = last.user || (last.uid === null ? 'an unknown owner' : 'uid ' + last.uid);
      $('refused').textContent = refused.total + ' from other users; the latest from ' +
        who + ' at ' + new Date(last.time * 1000).toLocaleString();
    }
    $('stop').disabled = !(info.state === 'running' || info.state === 'starting');
    $('restart').textContent = info.state === 'running' ? 'Restart' : 'Start';
    const log = $('log');
    log.hidden = !info.tail.length;
    log.textContent = info.tail.join('\\n');
    setTimeout(refresh, 1000);
  }
  async function post(what) {
    $('stop').disabled = $('restart').disabled = true;
    try {
      await fetch('api/' + what, {method: 'POST', credentials: 'same-origin',
                                  headers: {'X-XSRFToken': decodeURIComponent(xsrf)}});
    } finally { $('restart').disabled = false; }
  }
  $('stop').onclick = () => post('stop');
  $('restart').onclick = () => post('restart');
  $('copy').onclick = async () => {
    await navigator.clipboard.writeText($('snippet').textContent);
    $('copy').textContent = 'Copied';
  };
  refresh();
})();
</script>"""
    body = (
        "<h1><span id='spinner' class='spinner' aria-hidden='true' hidden></span>"
        "ParaView server <span id='state' class='state'>…</span></h1>"
        "<p id='message' class='muted'></p>"
        "<table class='facts'>"
        "<tr><th>Ranks</th><td id='ranks'>-</td></tr>"
        "<tr><th>Host</th><td id='host'>-</td></tr>"
        "<tr><th>Uptime</th><td id='uptime'>-</td></tr>"
        "<tr><th>Client</th><td id='client'>-</td></tr>"
        "<tr><th>Rendering</th><td id='rendering'>-</td></tr>"
        "<tr><th>Reachable on</th><td id='network'>-</td></tr>"
        "<tr id='refused-row' hidden><th>Refused connections</th>"
        "<td id='refused' class='bad'>-</td></tr>"
        "</table>"
        "<p class='actions'><button id='restart'>Restart</button>"
        "<button id='stop' class='secondary'>Stop</button>"
        f"<a href='{home}'>Back to JupyterLab</a></p>"
        "<h2>From a notebook</h2>"
        "<p>In a notebook on the <b>ParaView (pvpython)</b> kernel; no host, port or "
        "secret to type:</p>"
        f"<pre id='snippet'>{escape(SNIPPET)}</pre>"
        "<p><button id='copy' class='secondary'>Copy</button></p>"
        "<pre id='log' hidden></pre>"
        f"{script}"
    )
    return document("ParaView server", body)


def view_gone_page() -> str:
    return document(
        "ParaView view",
        "<h1 class='bad'>This ParaView view is gone</h1>"
        "<p>The notebook kernel that served it has stopped or was restarted. Run "
        "<code>hpc_proxies.paraview.show()</code> again in the notebook.</p>",
    )
