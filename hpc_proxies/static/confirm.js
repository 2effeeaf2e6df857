// The confirmation page's button: asks again from this page with the confirmation
// header (data-confirm-header on the script element), which no other site can add to
// a request that carries the user's login, then reloads to show what the server says.
(function () {
  const confirmHeader = document.currentScript.dataset.confirmHeader;
  const button = document.getElementById('confirm');
  button.addEventListener('click', async function () {
    button.disabled = true;
    try {
      await fetch(location.href, {headers: {[confirmHeader]: '1'}, cache: 'no-store',
                                  credentials: 'same-origin'});
    } catch (e) {
      console.error(e);  // the reload below shows whatever the server says now
    }
    location.replace(location.href);
  });
})();
