// Sign-in with the archive's OpenID Connect provider (ARCHIVE_OIDC_ISSUER), when /ui/config.json
// names one: authorization code with PKCE (S256 through WebCrypto, by oauth4webapi), a public
// client (ARCHIVE_UI_OIDC_CLIENT_ID). Tokens live in this module's memory only: a reload goes
// through the provider again (its own session answers at once, no form), and nothing in
// localStorage or sessionStorage can be read by a later script. sessionStorage holds only what the
// redirect must survive: the PKCE verifier, state, nonce and the page to return to, deleted on
// return. The code and state leave the address bar at once (history.replaceState). The access token
// is refreshed before it expires; signing out (by the user, or after ARCHIVE_UI_IDLE_MINUTES
// without input) ends the provider's session through its end_session_endpoint, by a form POST, so
// that the ID token hint never appears in a URL. The roles only hide controls: the server decides.
import * as oauth from "oauth4webapi";

export interface OidcConfig {
  issuer: string;
  client_id: string | null;
  roles_claim: string;
  idle_minutes: number;
}

export type Role = "reader" | "writer" | "admin";
const RANK: Record<Role, number> = { reader: 1, writer: 2, admin: 3 };

export interface Session {
  user: string;
  roles: Role[];
}

export const CALLBACK = "/ui/signed-in";
export const SIGNED_OUT = "/ui/signed-out";
const PENDING = "dicom-archive.sign-in"; // sessionStorage, during the redirect only
const REASON = "dicom-archive.signed-out"; // sessionStorage: why the last sign-out happened ("idle")
const REFRESH_AHEAD_S = 30; // refresh this long before the access token expires

interface Pending {
  verifier: string;
  state: string;
  nonce: string;
  back: string; // path and query to return to
}

interface Live {
  config: OidcConfig;
  as: oauth.AuthorizationServer;
  client: oauth.Client;
  access: string;
  refresh: string | undefined;
  idToken: string | undefined;
  expires: number; // ms since the epoch
  refreshTimer: number | undefined;
  idleTimer: number | undefined;
}

let live: Live | null = null;
let onChange: (session: Session | null) => void = () => undefined;

/** http:// is allowed for a loopback issuer only (the server refuses any other). */
function options(config: OidcConfig): { [oauth.allowInsecureRequests]?: boolean } {
  const url = new URL(config.issuer);
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
  return url.protocol === "http:" && loopback ? { [oauth.allowInsecureRequests]: true } : {};
}

async function discover(config: OidcConfig): Promise<oauth.AuthorizationServer> {
  const issuer = new URL(config.issuer);
  const response = await oauth.discoveryRequest(issuer, { algorithm: "oidc", ...options(config) });
  return oauth.processDiscoveryResponse(issuer, response);
}

function clientOf(config: OidcConfig): oauth.Client {
  if (!config.client_id) throw new Error("ARCHIVE_UI_OIDC_CLIENT_ID is not set: the page cannot sign in");
  return { client_id: config.client_id };
}

const redirectUri = () => `${location.origin}${CALLBACK}`;

/** Leave for the provider's sign-in page; come back to ``back``. */
export async function signIn(config: OidcConfig, back: string): Promise<never> {
  const as = await discover(config);
  const pending: Pending = {
    verifier: oauth.generateRandomCodeVerifier(), state: oauth.generateRandomState(),
    nonce: oauth.generateRandomNonce(), back,
  };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const url = new URL(as.authorization_endpoint!);
  url.searchParams.set("client_id", clientOf(config).client_id);
  url.searchParams.set("redirect_uri", redirectUri());
  url.searchParams.set("response_type", "code");
  url.searchParams.set("scope", "openid");
  url.searchParams.set("code_challenge", await oauth.calculatePKCECodeChallenge(pending.verifier));
  url.searchParams.set("code_challenge_method", "S256");
  url.searchParams.set("state", pending.state);
  url.searchParams.set("nonce", pending.nonce);
  location.assign(url.href);
  return new Promise<never>(() => undefined); // the page is leaving
}

/** Back from the provider at CALLBACK: trade the code for tokens; the path to show next. */
export async function completeSignIn(config: OidcConfig): Promise<string> {
  const callback = new URL(location.href);
  history.replaceState(null, "", CALLBACK); // the code and state leave the address bar now
  const saved = sessionStorage.getItem(PENDING);
  sessionStorage.removeItem(PENDING);
  if (!saved) throw new Error("This sign-in was not started by this page (or it was already used).");
  const pending = JSON.parse(saved) as Pending;
  const as = await discover(config);
  const client = clientOf(config);
  const params = oauth.validateAuthResponse(as, client, callback, pending.state);
  const response = await oauth.authorizationCodeGrantRequest(
    as, client, oauth.None(), params, redirectUri(), pending.verifier, options(config));
  const tokens = await oauth.processAuthorizationCodeResponse(as, client, response, {
    expectedNonce: pending.nonce, requireIdToken: true });
  const claims = oauth.getValidatedIdTokenClaims(tokens);
  live = { config, as, client, access: "", refresh: undefined, idToken: undefined, expires: 0,
           refreshTimer: undefined, idleTimer: undefined };
  keep(tokens);
  startIdleWatch();
  sessionStorage.removeItem(REASON);
  const back = pending.back.startsWith("/ui/") && !pending.back.startsWith(CALLBACK) ? pending.back : "/ui/";
  history.replaceState(null, "", back);
  onChange({ user: String(claims?.preferred_username ?? claims?.sub ?? ""), roles: rolesOf(tokens.access_token, config) });
  return back;
}

function keep(tokens: oauth.TokenEndpointResponse): void {
  if (!live) return;
  live.access = tokens.access_token;
  live.refresh = tokens.refresh_token ?? live.refresh;
  live.idToken = tokens.id_token ?? live.idToken;
  live.expires = Date.now() + (tokens.expires_in ?? 300) * 1000;
  clearTimeout(live.refreshTimer);
  const wait = Math.max(5, (tokens.expires_in ?? 300) - REFRESH_AHEAD_S) * 1000;
  if (live.refresh) live.refreshTimer = window.setTimeout(() => void refresh(), wait);
}

async function refresh(): Promise<void> {
  const now = live;
  if (!now?.refresh) return;
  try {
    const response = await oauth.refreshTokenGrantRequest(now.as, now.client, oauth.None(), now.refresh, options(now.config));
    keep(await oauth.processRefreshTokenResponse(now.as, now.client, response));
  } catch {
    forget(); // the provider ended the session: the next call gets 401 and the page offers sign-in
  }
}

/** The roles the access token's claim (ARCHIVE_OIDC_ROLES_CLAIM, a dotted path) lists. */
export function rolesOf(token: string, config: OidcConfig): Role[] {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    let value: unknown = JSON.parse(new TextDecoder().decode(bytes));
    for (const part of config.roles_claim.split(".")) {
      value = value && typeof value === "object" ? (value as Record<string, unknown>)[part] : undefined;
    }
    const list = Array.isArray(value) ? value : typeof value === "string" ? value.split(" ") : [];
    return list.filter((r): r is Role => typeof r === "string" && r in RANK);
  } catch {
    return [];
  }
}

/** Whether the signed-in user's roles include ``role`` or a higher one (always true without sign-in). */
export function may(session: Session | null, role: Role): boolean {
  if (!session) return true; // sign-in off: the server's loopback/open policy decides
  return session.roles.some((r) => RANK[r] >= RANK[role]);
}

function forget(): void {
  if (!live) return;
  clearTimeout(live.refreshTimer);
  clearTimeout(live.idleTimer);
  stopIdleWatch();
  live = null;
  onChange(null);
}

/** Sign out here and at the provider (its end_session_endpoint), then land on SIGNED_OUT. */
export function signOut(reason: "user" | "idle" = "user"): void {
  const was = live;
  forget();
  sessionStorage.setItem(REASON, reason);
  const end = was?.as.end_session_endpoint;
  if (!was || !end) {
    location.assign(SIGNED_OUT);
    return;
  }
  // RP-Initiated Logout 1.0 section 2: the OP accepts POST; a form keeps the ID token out of URLs.
  const form = document.createElement("form");
  form.method = "POST";
  form.action = end;
  form.hidden = true;
  const fields: Record<string, string | undefined> = {
    client_id: was.client.client_id, id_token_hint: was.idToken,
    post_logout_redirect_uri: `${location.origin}${SIGNED_OUT}`,
  };
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    form.append(input);
  }
  document.body.append(form);
  form.submit();
}

/** Why the last sign-out happened: "idle" after ARCHIVE_UI_IDLE_MINUTES without input. */
export function signedOutReason(): string | null {
  return sessionStorage.getItem(REASON);
}

const ACTIVITY = ["pointerdown", "keydown", "wheel", "touchstart"] as const;

function resetIdle(): void {
  if (!live) return;
  clearTimeout(live.idleTimer);
  live.idleTimer = window.setTimeout(() => signOut("idle"), live.config.idle_minutes * 60_000);
}

function startIdleWatch(): void {
  for (const name of ACTIVITY) addEventListener(name, resetIdle, { capture: true, passive: true });
  resetIdle();
}

function stopIdleWatch(): void {
  for (const name of ACTIVITY) removeEventListener(name, resetIdle, { capture: true });
}

export function watchSession(listener: (session: Session | null) => void): void {
  onChange = listener;
}

/** fetch with the bearer token when signed in (refreshed first if it is about to expire). */
export async function authorizedFetch(url: string, init: RequestInit = {}): Promise<Response> {
  if (live && live.refresh && Date.now() > live.expires - 5_000) await refresh();
  if (!live) return fetch(url, init);
  const headers = new Headers(init.headers);
  headers.set("Authorization", `Bearer ${live.access}`);
  return fetch(url, { ...init, headers });
}

/** Whether the page holds a token (sign-in on and done). */
export function signedIn(): boolean {
  return live !== null;
}
