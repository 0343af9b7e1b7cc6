import { useState } from 'preact/hooks';
import { explain, request, type Session } from '../api/client';
import type { LoginAnswer } from '../api/types';
import { ThemeToggle } from '../components/theme';

/** Sign in with an API key: it is exchanged for a session token at once and
 *  never stored; only the token is kept (sessionStorage, this tab only). */
export function SignIn({ onSignedIn, notice }: { onSignedIn: (s: Session) => void; notice: string | null }) {
  const [key, setKey] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    const k = key.trim();
    if (!k) {
      setError('Paste your API key (it starts with fml_). An admin makes one with `fetchml keygen`.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const a = await request<LoginAnswer>('/v1/auth/login', { method: 'POST', body: { api_key: k }, token: null });
      setKey('');
      onSignedIn({ token: a.token, user: a.user, role: a.role, expires_at: a.expires_at });
    } catch (err) {
      setError(explain(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">fetchml</h1>
        <p class="muted">Sign in with your API key to follow your jobs live.</p>
        {notice && !error && <p class="notice">{notice}</p>}
        <label for="apikey">API key</label>
        <input
          id="apikey"
          name="apikey"
          type="password"
          autocomplete="off"
          spellcheck={false}
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
          placeholder="fml_…"
          autoFocus
        />
        {error && (
          <p class="error" role="alert" data-testid="signin-error">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
        <div class="foot">
          <a href="/docs">api reference</a>
          <ThemeToggle />
        </div>
      </form>
    </main>
  );
}
