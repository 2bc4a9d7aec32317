// The Orderflow operators' console: sign in with a bearer token, then four
// pages (Overview, Orders, Catalog, Dead letters) over the admin API.
// Preact with htm: components in plain modules the browser loads as they
// are, no build step.
import { html, render } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, session } from './api.js';
import { Catalog } from './catalog.js';
import { DeadLetters } from './dead-letters.js';
import { OrderDetail, Orders } from './orders.js';
import { Overview } from './overview.js';

const PAGES = [
  { path: 'overview', title: 'Overview' },
  { path: 'orders', title: 'Orders' },
  { path: 'catalog', title: 'Catalog' },
  { path: 'dead-letters', title: 'Dead letters' },
];

function useRoute() {
  const read = () => (location.hash.replace(/^#\/?/, '') || 'overview').split('/');
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const changed = () => setRoute(read());
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return route;
}

function SignIn({ onSignedIn, message }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState(message);
  const [devToken, setDevToken] = useState(false);
  useEffect(() => {
    fetch('/console/session-options')
      .then((r) => r.json())
      .then(
        (o) => setDevToken(o.devToken),
        () => setDevToken(false),
      );
  }, []);
  const signIn = async (candidate) => {
    session.token = candidate.trim();
    try {
      await api('GET', '/v1/admin/invariants');
      onSignedIn();
    } catch (e) {
      session.token = null;
      setError(
        e instanceof ApiError && e.status === 403
          ? 'This token lacks the orders:admin scope.'
          : `Sign-in failed: ${e.message}`,
      );
    }
  };
  const mint = async () => {
    const response = await fetch('/console/dev-token', {
      method: 'POST',
      headers: { 'x-orderflow-console': 'dev-token' },
    });
    const body = await response.json();
    if (!response.ok) return setError(body.detail);
    await signIn(body.token);
  };
  return html`
    <main class="sign-in">
      <h1>Orderflow console</h1>
      <form onSubmit=${(e) => (e.preventDefault(), signIn(token))}>
        <label for="token">Bearer token (needs the <code>orders:admin</code> scope)</label>
        <textarea
          id="token"
          rows="4"
          value=${token}
          onInput=${(e) => setToken(e.target.value)}
          autocomplete="off"
          spellcheck="false"
          required
        ></textarea>
        <button type="submit">Sign in</button>
      </form>
      ${
        devToken &&
        html`<p>This is the embedded shape with the development issuer, and you are on this machine:</p>
          <button type="button" class="secondary" onClick=${mint}>Mint an operator token and sign in</button>`
      }
      ${error && html`<p class="error" role="alert">${error}</p>`}
    </main>
  `;
}

function Shell({ route, onSignOut }) {
  const [page, ...rest] = route;
  let content;
  if (page === 'orders' && rest[0]) content = html`<${OrderDetail} id=${rest[0]} />`;
  else if (page === 'orders') content = html`<${Orders} />`;
  else if (page === 'catalog') content = html`<${Catalog} />`;
  else if (page === 'dead-letters') content = html`<${DeadLetters} />`;
  else content = html`<${Overview} />`;
  const current = PAGES.find((p) => p.path === page) ?? PAGES[0];
  useEffect(() => {
    document.title = `${current.title} · Orderflow console`;
  }, [current]);
  return html`
    <header class="top">
      <a class="brand" href="#/overview">Orderflow</a>
      <nav aria-label="Console pages">
        ${PAGES.map((p) => html`<a href=${`#/${p.path}`} aria-current=${p === current ? 'page' : undefined}>${p.title}</a>`)}
      </nav>
      <button type="button" class="link" onClick=${onSignOut}>Sign out</button>
    </header>
    <main id="content">${content}</main>
  `;
}

function App() {
  const route = useRoute();
  const [signedIn, setSignedIn] = useState(Boolean(session.token));
  const [message, setMessage] = useState(undefined);
  useEffect(() => {
    const signedOut = (e) => {
      session.token = null;
      setMessage(`Signed out: ${e.detail ?? 'the token was refused'}`);
      setSignedIn(false);
    };
    addEventListener('orderflow:signed-out', signedOut);
    return () => removeEventListener('orderflow:signed-out', signedOut);
  }, []);
  if (!signedIn)
    return html`<${SignIn} message=${message} onSignedIn=${() => (setMessage(undefined), setSignedIn(true))} />`;
  return html`<${Shell} route=${route} onSignOut=${() => ((session.token = null), setSignedIn(false))} />`;
}

const root = document.getElementById('app');
root.textContent = ''; // the "Loading" line
render(html`<${App} />`, root);
