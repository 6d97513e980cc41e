#!/usr/bin/env bash
# Debian packages the tests and benchmarks use as real DICOM peers:
# DCMTK (storescu, echoscu, findscu, ...), Orthanc (+ DICOMweb plugin), dicom3tools;
# Prometheus (prometheus and promtool: the alert rules' tests, the dashboard's queries).
# Chromium for the web UI's browser tests.
set -euo pipefail
need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# the web UI's browser tests (Playwright drives Debian's Chromium; never `playwright install`)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
