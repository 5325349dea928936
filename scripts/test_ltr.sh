#!/usr/bin/env bash
# QGIS LTR check (`make test-ltr`): the plugin and the backend on Debian 13 "trixie"'s QGIS 3.40, Python 3.13 and
# numpy 2, next to the Debian 12 QGIS 3.22 that `make test` uses.
#
# Builds a Debian 13 root with debootstrap (Debian's packages only) in build/ltr-root, installs QGIS, Xvfb, Mesa
# and Debian's CPU torch there, a venv (--system-site-packages, like the Makefile's) with the remaining pinned
# packages, copies the working tree to /src inside it and runs the QGIS-facing tests plus a backend smoke test
# with pytest, desktop QGIS under Xvfb included. Needs root (debootstrap, chroot, mounts).
#
# Resumable: each stage leaves a stamp in the root (var/lib/d3rsmde-ltr/) holding a hash of what it installed;
# a second run skips the stages whose stamp matches and only copies the tree and runs the tests.
# Every heavy step runs under `nice -n 19 ionice -c3`. Wall time per stage and in total is printed at the end.
#
#   scripts/test_ltr.sh                      # build what is missing, run the default tests
#   scripts/test_ltr.sh tests/test_raster.py -k nodata   # other pytest arguments instead of the default tests
#   LTR_TORCH=pypi scripts/test_ltr.sh      # requirements.txt's torch from PyPI instead of Debian's (see below)
#   LTR_REV=HEAD scripts/test_ltr.sh         # test a commit instead of the working tree
#   D3RSMDE_TEST_REAL_INSTALL=1 scripts/test_ltr.sh tests/test_installer.py -k real_torch  # installer, real torch
#   LTR_ROOT=/elsewhere scripts/test_ltr.sh  # another root folder (default build/ltr-root)
#   LTR_REBUILD=1 scripts/test_ltr.sh        # delete the root first
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="$(realpath -m "${LTR_ROOT:-$REPO/build/ltr-root}")"
SUITE=trixie
MIRROR="${LTR_MIRROR:-http://deb.debian.org/debian}"
STAMPS="$ROOT/var/lib/d3rsmde-ltr"

# Debian 13 packages: QGIS 3.40 with PyQGIS and rasterio on its GDAL (numpy 2), Xvfb + Mesa GL for desktop QGIS,
# and torch/torchvision as Debian builds them (CPU only, no triton). PyPI has no CPU torch wheel, and its CUDA
# build for Python 3.13 is several GB; Debian's is what a Debian 13 user gets with apt.
APT_PACKAGES="qgis python3-qgis qgis-providers python3-rasterio python3-venv python3-pip ca-certificates
  xvfb xauth libgl1-mesa-dri libglx-mesa0 python3-torch python3-torchvision python3-scipy python3-yaml python3-tqdm"
# The rest from PyPI, pinned as in requirements.txt; numpy held at Debian's version (GDAL, rasterio and PyQGIS
# are built for it), and torch/torchvision too unless LTR_TORCH=pypi: then the venv gets requirements.txt's
# torch 2.14.1 + torchvision 0.29.1 (PyPI's CUDA build for Python 3.13, several GB to download; triton removed
# where no NVIDIA driver is found, as the Makefile does), the build the plugin's installer gives a QGIS 3.40 user.
PIP_PACKAGES="timm==1.0.31 diffusers==0.42.1 safetensors>=0.4 lpips==0.1.4 pytest pytest-qgis==5.0.2"
LTR_TORCH="${LTR_TORCH:-debian}"
case "$LTR_TORCH" in
  debian) HOLD="numpy torch torchvision" ;;
  pypi) HOLD="numpy" PIP_PACKAGES="torch==2.14.1 torchvision==0.29.1 $PIP_PACKAGES" ;;
  *) echo "LTR_TORCH is debian or pypi, not $LTR_TORCH" >&2; exit 2 ;;
esac
DEFAULT_TESTS=(tests/test_qgis_plugin.py tests/test_qgis_file_safety.py tests/test_qgis_desktop.py
  tests/test_installer.py tests/test_pipeline.py tests/test_raster.py)

if [ "$(id -u)" != 0 ]; then
  exec sudo --preserve-env=LTR_ROOT,LTR_MIRROR,LTR_REBUILD,LTR_REV,LTR_TORCH,D3RSMDE_TEST_REAL_INSTALL "$0" "$@"
fi
# Mounts (/proc, /sys, /dev in the root) are made in a mount namespace of this script's own where the system
# allows one: they vanish with its last process, even one killed outright, so nothing can leave a /dev bind
# mount under build/ for a later `rm -rf` to walk into. The EXIT trap unmounts them as well.
if [ -z "${LTR_MOUNT_NS:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
  LTR_MOUNT_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi
LOW=(nice -n 19)
if ionice -c3 true 2>/dev/null; then LOW+=(ionice -c3); fi

TIMES=()
T_START=$SECONDS
stage() {  # stage NAME: print a header and remember when it started
  STAGE_NAME=$1 STAGE_T0=$SECONDS
  echo ">> [ltr] $STAGE_NAME"
}
stage_done() {  # stage_done [skipped]
  TIMES+=("$(printf '%-24s %5d s%s' "$STAGE_NAME" $((SECONDS - STAGE_T0)) "${1:+ ($1)}")")
}
report_times() {
  echo ">> [ltr] wall time per stage:"
  printf '   %s\n' "${TIMES[@]}"
  printf '   %-24s %5d s\n' total $((SECONDS - T_START))
}

# Stamps hold a hash of the stage's inputs, so changing a package list redoes only that stage and what follows.
stamp_ok() { [ -f "$STAMPS/$1.done" ] && [ "$(cat "$STAMPS/$1.done")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1.done"; }
stamp_clear() { rm -f "$STAMPS/$1.done"; }
digest() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

mounted_under_root() { awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1' /proc/self/mounts | grep -q .; }

MOUNTS=()
unmount_all() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTS[i]}" 2>/dev/null || umount -R -l "${MOUNTS[i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
mount_all() {
  local dir
  for dir in proc sys dev; do
    mkdir -p "$ROOT/$dir"
    if ! mountpoint -q "$ROOT/$dir"; then
      mount --rbind "/$dir" "$ROOT/$dir"
      mount --make-rslave "$ROOT/$dir"  # unmounting here never propagates back to the host's /dev, /sys
      MOUNTS+=("$ROOT/$dir")
    fi
  done
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}
trust_host_cas() {  # the host's own CAs (a TLS-inspecting proxy's, say) are trusted inside too, pip included
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null && [ -x "$ROOT/usr/sbin/update-ca-certificates" ]; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    in_root "update-ca-certificates >/dev/null"
  fi
}
on_exit() {
  local status=$?
  unmount_all
  report_times
  exit $status
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_root() {  # in_root COMMAND...: run a bash command inside the root, clean environment, low priority
  "${LOW[@]}" chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 PIP_CERT=/etc/ssl/certs/ca-certificates.crt ${CI:+CI=$CI} \
    ${D3RSMDE_TEST_REAL_INSTALL:+D3RSMDE_TEST_REAL_INSTALL=$D3RSMDE_TEST_REAL_INSTALL} \
    ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} ${NO_PROXY:+NO_PROXY=$NO_PROXY} bash -euo pipefail -c "$1"
}

# --- stage 1: debootstrap on the host
stage "host debootstrap"
if command -v debootstrap >/dev/null; then
  stage_done skipped
else
  DEBIAN_FRONTEND=noninteractive "${LOW[@]}" apt-get install -y -q --no-install-recommends debootstrap \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive "${LOW[@]}" apt-get install -y -q \
           --no-install-recommends debootstrap; }
  stage_done
fi

# --- stage 2: the Debian 13 base system
stage "debootstrap $SUITE"
if mounted_under_root; then
  echo "!! something is still mounted under $ROOT (an earlier run killed outright?): unmount it first:" >&2
  awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 {print "   " $2}' /proc/self/mounts >&2
  exit 1
fi
if [ -n "${LTR_REBUILD:-}" ] && [ -d "$ROOT" ]; then
  rm -rf --one-file-system "$ROOT"
fi
BASE_KEY=$(digest "$SUITE" "$MIRROR")
# The finished root takes about 3.4 GB (QGIS, torch, the venv); check before a full disk can break it half-way.
stamp_ok apt "$(digest $APT_PACKAGES)" || "$REPO/scripts/require_disk.sh" 4 "$ROOT" "The QGIS 3.40 root"
if stamp_ok debootstrap "$BASE_KEY"; then
  stage_done skipped
else
  # A half-made root (interrupted debootstrap) is started again from nothing; nothing is mounted in it (checked).
  [ -d "$ROOT" ] && rm -rf --one-file-system "$ROOT"
  mkdir -p "$ROOT"
  "${LOW[@]}" debootstrap --variant=minbase --components=main "$SUITE" "$ROOT" "$MIRROR"
  cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
  # No daemon may start inside the root (a package's postinst would otherwise try).
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  stamp_set debootstrap "$BASE_KEY"
  stage_done
fi

mount_all

# --- stage 3: QGIS and the other Debian packages
stage "apt: QGIS, torch, Xvfb"
APT_KEY=$(digest $APT_PACKAGES)
if stamp_ok apt "$APT_KEY"; then
  stage_done skipped
else
  stamp_clear venv
  in_root "apt-get update -q && apt-get install -y -q --no-install-recommends $(echo $APT_PACKAGES) && apt-get clean"
  stamp_set apt "$APT_KEY"
  stage_done
fi
trust_host_cas

# --- stage 4: the sources at /src, every run: the working tree as it is now (tracked and untracked files, not the
# ignored ones), or with LTR_REV=<commit> that commit (`git archive`), e.g. while others edit the tree.
SOURCE_NAME="working tree"
[ -z "${LTR_REV:-}" ] || SOURCE_NAME="${LTR_REV:0:12}"
stage "copy $SOURCE_NAME"
mkdir -p "$ROOT/src"
find "$ROOT/src" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf --one-file-system {} +
if [ -n "${LTR_REV:-}" ]; then
  git -C "$REPO" archive --format=tar "$LTR_REV" | tar -xf - -C "$ROOT/src"
else
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
     | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
     | tar --null -T - -cf -) | tar -xf - -C "$ROOT/src"
fi
stage_done

# --- stage 5: the venv at /src/.venv (where scripts/run_qgis.sh and scripts/qgis_env.sh look for it)
stage "venv: pip packages"
VENV_KEY=$(digest "$APT_KEY" $PIP_PACKAGES "$HOLD" "$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)")
if stamp_ok venv "$VENV_KEY" && [ -x "$ROOT/src/.venv/bin/python" ]; then
  stage_done skipped
else
  in_root "
    cd /src
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
    for name in $HOLD; do  # Debian's versions of these, as constraints
      /usr/bin/python3 -c \"import \$name; print('\$name==' + \$name.__version__)\"
    done >.venv/debian-constraints.txt
    .venv/bin/python -m pip install -q -c .venv/debian-constraints.txt $PIP_PACKAGES
    .venv/bin/python -m pip install -q --no-deps -e .
    if ! command -v nvidia-smi >/dev/null && .venv/bin/python -m pip show -q triton 2>/dev/null; then
      .venv/bin/python -m pip uninstall -q -y triton
    fi
  "
  stamp_set venv "$VENV_KEY"
  stage_done
fi

# --- stage 6: the tests
stage "tests"
in_root "
  cd /src
  echo \"QGIS \$(python3 -c 'from qgis.core import Qgis; print(Qgis.version())'), \$(.venv/bin/python -c 'import sys, numpy, torch, rasterio
print(f\"Python {sys.version.split()[0]}, numpy {numpy.__version__}, torch {torch.__version__}, rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__})\")')\"
  export PATH=/src/.venv/bin:\$PATH QT_QPA_PLATFORM=offscreen
  exec .venv/bin/python -m pytest -q -p no:cacheprovider $(printf '%q ' "${@:-${DEFAULT_TESTS[@]}}")
" || status=$?
stage_done
exit "${status:-0}"
