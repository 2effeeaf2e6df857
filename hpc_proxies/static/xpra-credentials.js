// Hands the launch password to Xpra's HTML5 client, which reads `password` and
// `sharing` from sessionStorage (and then drops the password), so the password never
// goes through a URL. The body of a function: xpra.page_script wraps it with `const pw`.
try {
  sessionStorage.setItem('password', pw);
  sessionStorage.setItem('sharing', 'true');
} catch (e) {
  // Storage is blocked (a privacy setting): the client asks for the password instead.
  console.warn('hpc-proxies: no sessionStorage for the Xpra password', e);
}
