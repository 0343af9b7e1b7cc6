import { useEffect, useMemo, useState } from 'preact/hooks';
import { LocationProvider, Router, Route, useLocation } from 'preact-iso';
import { ApiError, abortInflight, explain, loadSession, request, saveSession, setOnUnauthenticated, type Session } from './api/client';
import type { Whoami } from './api/types';
import { SessionContext, abilities, useSession, type Ctx } from './lib/session';
import { StreamClient, streamUrl, type StreamStatus } from './lib/stream';
import { SignIn } from './pages/signin';
import { JobsPage } from './pages/jobs';
import { JobPage } from './pages/job';
import { ExperimentsPage } from './pages/experiments';
import { WorkersPage } from './pages/workers';
import { DeadLettersPage } from './pages/deadletters';
import { HistoryPage } from './pages/history';
import { AuditPage } from './pages/audit';
import { ThemeToggle } from './components/theme';

const WHOAMI_KEY = 'fetchml.whoami';

function cachedWhoami(s: Session | null): Whoami | null {
  if (!s) return null;
  try {
    const w = JSON.parse(sessionStorage.getItem(WHOAMI_KEY) ?? 'null') as Whoami | null;
    return w && w.user === s.user ? w : null;
  } catch {
    return null;
  }
}

export function App() {
  const [session, setSession] = useState<Session | null>(loadSession());
  // The last whoami of this session (sessionStorage) renders the pages at
  // once on a reload; it is refreshed below, and a 401 signs out.
  const [me, setMe] = useState<Whoami | null>(() => cachedWhoami(session));
  const [error, setError] = useState<string | null>(null);

  const signOut = async (revoke = true) => {
    const s = loadSession();
    abortInflight();
    saveSession(null);
    sessionStorage.removeItem(WHOAMI_KEY);
    setSession(null);
    setMe(null);
    if (revoke && s) {
      // The token is revoked on the server: a copy of it is useless now.
      await request('/v1/auth/logout', { method: 'POST', token: s.token }).catch(() => {});
    }
  };

  useEffect(() => {
    setOnUnauthenticated(() => {
      setError('Your session ended (expired, revoked, or the key was removed). Sign in again.');
      void signOut(false);
    });
  }, []);

  useEffect(() => {
    if (!session) return;
    request<Whoami>('/v1/auth/whoami')
      .then((w) => {
        sessionStorage.setItem(WHOAMI_KEY, JSON.stringify(w));
        setMe((old) => (old && JSON.stringify(old) === JSON.stringify(w) ? old : w));
      })
      .catch((e) => {
        if (e instanceof ApiError && e.status === 401) return;
        setError(explain(e));
      });
  }, [session]);

  if (!session) {
    return (
      <SignIn
        notice={error}
        onSignedIn={(s) => {
          setError(null);
          saveSession(s);
          setSession(s);
        }}
      />
    );
  }
  if (!me) {
    return <div class="center muted">{error ?? 'Loading…'}</div>;
  }
  return (
    <LocationProvider>
      <Shell me={me} token={session.token} signOut={() => void signOut()} />
    </LocationProvider>
  );
}

function Shell({ me, token, signOut }: { me: Whoami; token: string; signOut: () => void }) {
  const [status, setStatus] = useState<StreamStatus>('connecting');
  const stream = useMemo(() => new StreamClient(streamUrl(), token), [token]);
  useEffect(() => {
    stream.onStatus = (s) => {
      setStatus(s);
      if (s === 'revoked') signOut();
    };
    stream.start();
    return () => stream.stop();
  }, [stream]);
  const ctx: Ctx = useMemo(() => ({ me, can: abilities(me.permissions), stream, signOut }), [me, stream]);
  return (
    <SessionContext.Provider value={ctx}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/">
          fetchml
        </a>
        <Nav />
        <div class="who">
          <span class={`live-dot ${status}`} title={`live stream: ${status}`} aria-label={`live stream ${status}`} />
          <span data-testid="whoami">
            {me.user} <span class="muted">({me.role})</span>
          </span>
          <ThemeToggle />
          <button type="button" class="link" onClick={signOut} data-testid="signout">
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Router>
          <Route path="/" component={JobsPage} />
          <Route path="/jobs" component={JobsPage} />
          <Route path="/jobs/:id" component={JobPage} />
          <Route path="/experiments" component={ExperimentsPage} />
          <Route path="/experiments/:name" component={ExperimentsPage} />
          <Route path="/workers" component={WorkersPage} />
          <Route path="/dead-letters" component={DeadLettersPage} />
          <Route path="/history" component={HistoryPage} />
          {/* Without audit:read the path is not routed at all: the page is not offered. */}
          {ctx.can.audit ? [<Route path="/audit" component={AuditPage} key="audit" />] : []}
          <Route default component={NotFound} />
        </Router>
      </main>
    </SessionContext.Provider>
  );
}

function Nav() {
  const { path } = useLocation();
  const { can } = useSession();
  const items: [string, string][] = [
    ['/jobs', 'Jobs'],
    ['/experiments', 'Experiments'],
    ['/workers', 'Workers'],
    ['/dead-letters', 'Dead letters'],
    ['/history', 'History'],
    ...(can.audit ? ([['/audit', 'Audit']] as [string, string][]) : []),
  ];
  const current = (href: string) => path === href || path.startsWith(`${href}/`) || (href === '/jobs' && path === '/');
  return (
    <nav aria-label="pages">
      {items.map(([href, label]) => (
        <a href={href} aria-current={current(href) ? 'page' : undefined} key={href}>
          {label}
        </a>
      ))}
    </nav>
  );
}

function NotFound() {
  return (
    <section class="empty">
      <h1>No such page</h1>
      <p>
        Go to the <a href="/jobs">job list</a>.
      </p>
    </section>
  );
}
