// An image from the API: with sign-in on, fetched with the bearer token and shown through a blob:
// URL (the CSP allows img-src blob:), so that no token ever goes into an image URL; without
// sign-in, a plain <img src> (the browser's cache and lazy loading).
import { useEffect, useState } from "preact/hooks";
import { authorizedFetch, signedIn } from "./auth";

interface Props {
  src: string;
  alt: string;
  class?: string;
  width?: number;
  height?: number;
  onError?: () => void;
}

export function AuthImage({ src, onError, ...rest }: Props) {
  const withToken = signedIn();
  const [blob, setBlob] = useState<string | null>(null);
  useEffect(() => {
    if (!withToken) return;
    const abort = new AbortController();
    let url: string | null = null;
    authorizedFetch(src, { signal: abort.signal })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((b) => {
        url = URL.createObjectURL(b);
        setBlob(url);
      })
      .catch(() => abort.signal.aborted || onError?.());
    return () => {
      abort.abort();
      if (url) URL.revokeObjectURL(url);
    };
  }, [src, withToken]);
  if (!withToken) return <img {...rest} src={src} loading="lazy" onError={onError} />;
  return blob ? <img {...rest} src={blob} onError={onError} /> : <div class={`${rest.class ?? ""} loading`} role="img" aria-label={`${rest.alt} (loading)`} />;
}
