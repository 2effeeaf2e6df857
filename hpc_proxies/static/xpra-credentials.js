// Hands the launch's secrets to Xpra's HTML5 client, which reads `password`, `sharing`
// and, with encryption on, `encryption` and `key` from sessionStorage, so no secret goes
// through a URL. The body of a function: xpra.page_script wraps it with `const pw`, an
// object of those values. The client drops the password itself; the key is dropped here
// once the client has read it, so it does not outlive the page in this tab's storage.
// The client reads it in its page's jQuery ready handler, which may run after the
// window's load event: so the key goes in a ready handler added at load, which jQuery
// runs after the page's own.
try {
  for (const [name, value] of Object.entries(pw)) {
    sessionStorage.setItem(name, value);
  }
  sessionStorage.setItem('sharing', 'true');
  if ('key' in pw) {
    window.addEventListener('load', () => {
      window.jQuery(() => {
        sessionStorage.removeItem('key');
        sessionStorage.removeItem('encryption');
      });
    });
  }
} catch (e) {
  // Storage is blocked (a privacy setting): the client asks for the password instead.
  console.warn('hpc-proxies: no sessionStorage for the Xpra password', e);
}
