#!/usr/bin/env bash
# Debian packages the tests and benchmarks use as real DICOM peers:
# DCMTK (storescu, echoscu, findscu, ...), Orthanc (+ DICOMweb plugin), dicom3tools;
# Prometheus (prometheus and promtool: the alert rules' tests, the dashboard's queries).
# Chromium for the web UI's browser tests.
# The test cluster (scripts/cluster.sh): containerd, runc, etcd, the CNI plugins, iptables, conntrack.
set -euo pipefail
need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# the web UI's browser tests (Playwright drives Debian's Chromium; never `playwright install`)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' maintainer scripts from starting system-wide daemons (containerd, etcd):
  # the test cluster starts its own, with its state in the project's folder.
  policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; added=1; fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$added" = 0 ] || rm -f $policy
fi
