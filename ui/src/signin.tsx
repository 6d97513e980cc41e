// Starting the page: without sign-in (no issuer in /ui/config.json) the app at once; with it, the
// provider's sign-in first (or its return at /ui/signed-in), then the app with a session bar (who,
// which role, Sign out). /ui/signed-out is where a sign-out lands. See auth.ts.
import { render } from "preact";
import { loadConfig, type UiConfig } from "./api";
import { App } from "./app";
import { CALLBACK, SIGNED_OUT, completeSignIn, signIn, signedOutReason, type OidcConfig } from "./auth";
import { setOidc } from "./session";

function Message({ title, text, config }: { title: string; text: string; config: OidcConfig | null }) {
  return (
    <main class="signed-out" aria-labelledby="signed-out-title">
      <header class="top"><h1><a href="/ui/">DICOM archive</a></h1></header>
      <h2 id="signed-out-title">{title}</h2>
      <p role="status">{text}</p>
      {config && <button type="button" onClick={() => void signIn(config, "/ui/")}>Sign in</button>}
    </main>
  );
}

export async function start(root: HTMLElement): Promise<void> {
  let config: UiConfig = { oidc: null, viewer_url: null };
  try {
    config = await loadConfig();
  } catch {
    // without it: no viewer link, no sign-in; the API's answers say what is missing
  }
  const oidc = config.oidc;
  setOidc(oidc);
  if (oidc) {
    try {
      if (location.pathname === SIGNED_OUT) {
        const idle = signedOutReason() === "idle";
        render(<Message title="Signed out" config={oidc}
          text={idle ? "You were signed out after a time without activity." : "You are signed out."} />, root);
        return;
      }
      if (location.pathname === CALLBACK) await completeSignIn(oidc);
      else await signIn(oidc, `${location.pathname}${location.search}`);
    } catch (error) {
      // a TypeError from fetch: the provider unreachable, or its CORS answer refused this origin
      const text = error instanceof TypeError
        ? `The sign-in provider could not be reached from this page: is ${location.origin} among the web origins of the client ${oidc.client_id ?? ""}?`
        : String(error instanceof Error ? error.message : error);
      render(<Message title="Sign-in failed" config={oidc} text={text} />, root);
      return;
    }
  }
  render(<App initial={config} />, root);
}
