// ParaView's status page: polls api/status every second; the buttons post to
// api/stop|restart with the Jupyter server's XSRF token (a cookie-authenticated POST
// needs it). Where the site runs pvserver on MPI ranks, (Re)start takes the count in
// the Ranks field, up to the site's max_ranks; a refusal's reason shows as the message.
// Where pvserver runs as a Slurm job of its own, the "Slurm job" rows say where it is.
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
  // engine = slurm: pvserver's own batch job, its state as a user says it (the service
  // reports the final state of a job it stopped: CANCELLED).
  function jobWords(job) {
    const state = job.state || '';
    let words;
    if (!state) words = 'submitted';
    else if (state === 'PENDING') {
      words = 'pending' + (job.reason && job.reason !== 'None' ? ': ' + job.reason : '');
    } else words = state.toLowerCase().replace(/_/g, ' ');
    return job.id + ' — ' + words;
  }
  function clock(s) {  // h:mm:ss
    const pad = (n) => String(n).padStart(2, '0');
    return Math.floor(s / 3600) + ':' + pad(Math.floor(s / 60) % 60) + ':' + pad(s % 60);
  }
  function showJob(job, live) {
    $('job-rows').hidden = !job;
    if (!job) return;
    const none = '—';
    $('job').textContent = jobWords(job);
    $('job-nodes').textContent = job.nodes && job.nodes !== '(null)' ? job.nodes : none;
    $('job-ranks').textContent = job.ranks || none;
    $('job-limit').textContent = job.time_limit || none;
    const left = live && job.time_left !== null && job.time_left !== undefined;
    $('job-left').textContent = left ? clock(job.time_left) : none;
    $('job-ending-row').hidden = !job.ending;
    $('job-ending').textContent = job.ending || '';
  }
  let edited = false;  // the user typed a count: polling no longer overwrites it
  let refusal = '';   // why the last (re)start was refused, until the next one
  async function refresh() {
    let info;
    try {
      const r = await fetch('api/status', {cache: 'no-store', credentials: 'same-origin'});
      info = await r.json();
    } catch (e) { setTimeout(refresh, 1000); return; }
    $('state').textContent = labels[info.state] || info.state;
    $('state').className = 'state ' + info.state;
    $('spinner').hidden = !(info.state === 'starting' || info.state === 'stopping');
    $('message').textContent = refusal || info.message;
    $('message').className = refusal ? 'bad' : 'muted';
    const choice = $('ranks-input');
    $('ranks-choice').hidden = info.engine === 'local';
    choice.max = info.max_ranks;
    if (!edited) choice.value = info.ranks_next;
    $('ranks').textContent = info.ranks || '-';
    $('host').textContent = info.host + (info.port ? ' (port ' + info.port + ')' : '');
    $('uptime').textContent = uptime(info.uptime);
    $('client').textContent = info.client_connected ? 'connected' : 'none';
    $('rendering').textContent = info.rendering + (info.display ? ' ' + info.display : '');
    $('network').textContent = info.network || '-';
    showJob(info.job, ['starting', 'running', 'stopping'].includes(info.state));
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
    log.textContent = info.tail.join('\n');
    setTimeout(refresh, 1000);
  }
  async function post(what) {
    $('stop').disabled = $('restart').disabled = true;
    refusal = '';
    try {
      const r = await fetch('api/' + what, {method: 'POST', credentials: 'same-origin',
                                            headers: {'X-XSRFToken': decodeURIComponent(xsrf)}});
      if (r.status === 400) refusal = (await r.json()).error;
    } finally { $('restart').disabled = false; }
  }
  $('ranks-input').oninput = () => { edited = true; };
  $('stop').onclick = () => post('stop');
  $('restart').onclick = () => post($('ranks-choice').hidden ? 'restart'
    : 'restart?ranks=' + encodeURIComponent($('ranks-input').value));
  $('copy').onclick = async () => {
    await navigator.clipboard.writeText($('snippet').textContent);
    $('copy').textContent = 'Copied';
  };
  refresh();
})();
