// Who is signed in and what they may do, for every page.
import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import type { Whoami } from '../api/types';
import type { StreamClient } from './stream';

export type Abilities = {
  /** Reads jobs in full (own, group or all): owners, commands, env, tags. */
  full: boolean;
  create: boolean;
  cancel: boolean;
  retry: boolean;
  logs: boolean;
  workers: boolean;
  experiments: boolean;
  /** Reads the whole trail (`GET /v1/audit`): admins. */
  audit: boolean;
};

export function abilities(permissions: string[]): Abilities {
  const has = (p: string) => permissions.includes(p);
  return {
    full: has('jobs:read') || has('jobs:read:all') || has('jobs:read:group'),
    create: has('jobs:create'),
    cancel: has('jobs:cancel') || has('jobs:cancel:all'),
    retry: has('jobs:retry') || has('jobs:retry:all'),
    logs: has('jobs:logs') || has('jobs:logs:all'),
    workers: has('workers:read'),
    experiments: has('experiments:read'),
    audit: has('audit:read'),
  };
}

export type Ctx = { me: Whoami; can: Abilities; stream: StreamClient; signOut: () => void };

export const SessionContext = createContext<Ctx | null>(null);

export function useSession(): Ctx {
  const c = useContext(SessionContext);
  if (!c) throw new Error('no session');
  return c;
}
