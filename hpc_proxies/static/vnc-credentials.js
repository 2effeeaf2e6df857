// Answers noVNC's credentials dialog with the launch password whenever it opens (first
// connection and every reconnection), so the password never goes through a URL.
// The body of a function: vnc.page_script wraps it with `const pw` (the password).
function fill() {
  const dialog = document.getElementById('noVNC_credentials_dlg');
  const input = document.getElementById('noVNC_password_input');
  if (dialog && input && dialog.classList.contains('noVNC_open') && !input.value) {
    input.value = pw;
    document.getElementById('noVNC_credentials_button').click();
  }
}
new MutationObserver(fill).observe(document.documentElement,
                                   {subtree: true, attributes: true, attributeFilter: ['class']});
