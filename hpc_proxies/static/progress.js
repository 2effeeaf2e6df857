// The progress page: polls the launcher for its state (with the probe header, it
// answers JSON, holding the answer up to half a second while the app starts) and
// reloads as soon as the app answers or the start failed.
// Header names come from the script element's data-probe-header / data-state-header.
(function () {
  const headers = document.currentScript.dataset;
  const bar = document.getElementById('bar'), secs = document.getElementById('secs');
  const log = document.getElementById('log');
  async function poll() {
    let r;
    try {
      r = await fetch(location.href, {headers: {[headers.probeHeader]: '1'}, cache: 'no-store',
                                      credentials: 'same-origin'});
    } catch (e) { setTimeout(poll, 1000); return; }
    const state = r.headers.get(headers.stateHeader);
    if (!state) { location.reload(); return; }          // the app itself answered
    if (state !== 'starting') { location.reload(); return; }  // show why it stopped
    const info = await r.json();
    secs.textContent = info.elapsed.toFixed(1);
    bar.style.width = Math.min(100, 100 * info.elapsed / info.timeout) + '%';
    if (info.tail.length) { log.hidden = false; log.textContent = info.tail.join('\n');
                            log.scrollTop = log.scrollHeight; }
    setTimeout(poll, 50);  // the launcher paces the polls: it holds each answer while the app starts
  }
  poll();
})();
