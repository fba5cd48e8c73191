#!/usr/bin/env bash
# Installs what amlfs needs on a Debian machine, from nothing: system packages (only the
# missing ones) and a virtualenv in .venv with amlfs, its test tools and the benchmark's
# plotting library. With --emulator, also the pinned Azure Storage emulator from
# package-lock.json; with --bench, the benchmark's tools (fio, and rclone as the peer mount).
set -euo pipefail
cd "$(dirname "$0")/.."

want_emulator=false
want_bench=false
for arg in "$@"; do
  case "$arg" in
    --emulator) want_emulator=true ;;
    --bench) want_emulator=true; want_bench=true ;;
    *) echo "bootstrap: error: unknown option $arg (use --emulator, --bench)" >&2; exit 2 ;;
  esac
done

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
dpkg -s fuse3 >/dev/null 2>&1 || missing+=(fuse3)
dpkg -s libfuse3-dev >/dev/null 2>&1 || missing+=(libfuse3-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v gcc >/dev/null || missing+=(gcc)
command -v patch >/dev/null || missing+=(patch)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[[ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)/Python.h" ]] \
  || missing+=(python3-dev)
if $want_emulator; then
  command -v npm >/dev/null || missing+=(nodejs npm)
fi
if $want_bench; then
  command -v fio >/dev/null || missing+=(fio)
  command -v rclone >/dev/null || missing+=(rclone)
fi
if ((${#missing[@]})); then
  echo "bootstrap: installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import amlfs, pytest, pyfuse3, matplotlib' 2>/dev/null \
   || [[ pyproject.toml -nt .venv/.installed ]]; then
  echo "bootstrap: installing amlfs into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  touch .venv/.installed
fi

# pyfuse3 with the patch in patches/pyfuse3 (see patches/README.md), built from the pinned
# release's source under a local version label, so that pip shows it is not the release.
PYFUSE3_RELEASE=3.5.0
PYFUSE3_BUILD="$PYFUSE3_RELEASE+amlfs.2"  # bump .N whenever a patch changes
installed_pyfuse3() {
  .venv/bin/python -c 'from importlib.metadata import version; print(version("pyfuse3"))' 2>/dev/null
}
if [[ "$(installed_pyfuse3)" != "$PYFUSE3_BUILD" ]]; then
  echo "bootstrap: building pyfuse3 $PYFUSE3_BUILD (pyfuse3 $PYFUSE3_RELEASE with patches/pyfuse3)"
  work=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: "pyfuse3==$PYFUSE3_RELEASE" -d "$work"
  tar xzf "$work/pyfuse3-$PYFUSE3_RELEASE.tar.gz" -C "$work"
  source_dir="$work/pyfuse3-$PYFUSE3_RELEASE"
  for change in patches/pyfuse3/*.patch; do
    patch -s -p1 -d "$source_dir" < "$change"
  done
  rm -f "$source_dir/src/pyfuse3/__init__.c"  # shipped pre-generated: Cython must redo it
  SETUPTOOLS_SCM_PRETEND_VERSION="$PYFUSE3_BUILD" \
    .venv/bin/pip install -q --no-deps --force-reinstall "$source_dir"
  rm -rf "$work"
fi

if $want_emulator && [[ ! -x node_modules/.bin/azurite-blob || package-lock.json -nt node_modules ]]; then
  echo "bootstrap: installing the Azure Storage emulator (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi
