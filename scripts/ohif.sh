#!/usr/bin/env bash
# The OHIF viewer for the real-viewer test (tests/e2e/test_ohif.py): the prebuilt dist/ of the
# @ohif/app package from npm, at the version and integrity pinned in tests/ohif/ohif.json.
# Only the tarball is fetched (`npm pack`, ~50 MB; no dependencies: dist/ is self-contained) and
# its sha512 checked against the pin; dist/ (~200 MB) is unpacked into
# ~/.cache/dicom-archive/ohif/<version>/dist, so a second run reuses it. Prints that path.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=tests/ohif/ohif.json
read -r name version integrity < <(python3 -c "import json, sys; p = json.load(open(sys.argv[1])); \
print(p['package'], p['version'], p['integrity'])" "$pin")
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dicom-archive"
dest="$cache/ohif/$version"
mkdir -p "$cache/ohif"
exec 9>"$cache/ohif/.lock"  # two checkouts at once: one fetches, the other waits and reuses it
flock -w 600 9 || { echo "ohif: another scripts/ohif.sh holds $cache/ohif/.lock" >&2; exit 1; }
if [ -f "$dest/.installed" ]; then
  echo "$dest/dist"
  exit 0
fi
command -v npm >/dev/null || { echo "ohif: npm is needed (Node.js 20; scripts/system-deps.sh)" >&2; exit 1; }
work="$(mktemp -d "$cache/ohif/tmp-XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "ohif: fetching $name@$version" >&2
npm pack "$name@$version" --pack-destination "$work" --cache "$cache/npm" --prefer-offline \
  --no-audit --no-fund --loglevel=error >/dev/null
tarball="$(ls "$work"/*.tgz)"
got="$(python3 -c "import base64, hashlib, sys; \
print('sha512-' + base64.b64encode(hashlib.sha512(open(sys.argv[1], 'rb').read()).digest()).decode())" "$tarball")"
if [ "$got" != "$integrity" ]; then
  echo "ohif: $tarball has integrity $got, $pin pins $integrity" >&2
  exit 1
fi
mkdir -p "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked" package/dist package/LICENSE
[ -f "$work/unpacked/package/dist/index.html" ] || { echo "ohif: $name@$version has no dist/index.html" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/unpacked/package" "$dest"
touch "$dest/.installed"
echo "$dest/dist"
