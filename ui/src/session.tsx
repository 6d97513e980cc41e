// The signed-in user for the components: useSession() (re-renders on change) and the session bar
// in the page's header (who, which role, Sign out; a Sign in button once signed out).
import { useEffect, useState } from "preact/hooks";
import { signIn, signOut, watchSession, type OidcConfig, type Session } from "./auth";

let current: Session | null = null;
const listeners = new Set<(s: Session | null) => void>();
watchSession((session) => {
  current = session;
  listeners.forEach((l) => l(session));
});

/** The signed-in user (null without sign-in or once signed out); re-renders on change. */
export function useSession(): Session | null {
  const [session, setSession] = useState(current);
  useEffect(() => {
    listeners.add(setSession);
    return () => void listeners.delete(setSession);
  }, []);
  return session;
}

let oidc: OidcConfig | null = null;

/** The sign-in settings (from /ui/config.json), once known. */
export function setOidc(config: OidcConfig | null): void {
  oidc = config;
}

/** Who is signed in, the role, and Sign out (nothing without sign-in). */
export function SessionBar() {
  const session = useSession();
  if (!oidc) return null;
  if (!session) {
    const config = oidc;
    return (<div class="session"><button type="button" onClick={() => void signIn(config, "/ui/")}>Sign in</button></div>);
  }
  return (
    <div class="session">
      <span class="who">Signed in as <strong>{session.user}</strong> (<span class="role">{session.roles.join(", ") || "no role"}</span>)</span>
      <button type="button" onClick={() => signOut("user")}>Sign out</button>
    </div>
  );
}
