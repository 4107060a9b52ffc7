#!/usr/bin/env bash
# One-command set-up for a fresh Debian/Ubuntu machine (Python 3.10+).
#
#   bash scripts/setup.sh app    install everything, then open napari on the sample case
#   bash scripts/setup.sh test   install everything plus test tools, then lint and run all tests
#
# Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail
mode="${1:-app}"
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

# --- 1. system libraries: Qt xcb platform, OpenGL (Mesa), a virtual display, a C++ compiler ---
sys_pkgs=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 g++)
# independent references the tests compare against: plastimatch (Dice/HD95), dciodvfy (DICOM)
[ "$mode" = "test" ] && sys_pkgs+=(plastimatch dicom3tools)
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in "${sys_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[setup] installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. Python environment ---
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
pins=(-c requirements/constraints.txt)
echo "[setup] installing Python packages into $venv"
"${pip[@]}" install -U pip setuptools wheel
# torch pinned to the CPU wheel the machines keep on disk; plain "torch" pulls a multi-GB CUDA build.
# pyradiomics 3.0.1 only builds without build isolation, with its build deps installed first.
"${pip[@]}" install "${pins[@]}" numpy SimpleITK PyWavelets pykwalify six cython "torch==2.13.0"
"${pip[@]}" install --no-build-isolation --no-deps "pyradiomics==3.0.1"
"${pip[@]}" install "${pins[@]}" --no-build-isolation pydensecrf2
extras="qt,train"; [ "$mode" = "test" ] && extras="qt,train,test"
"${pip[@]}" install "${pins[@]}" --no-build-isolation -e ".[$extras]"

have_display() { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; }

case "$mode" in
  app)
    if have_display; then
      exec "$venv/bin/hecktor" view
    fi
    shot="${TMPDIR:-/tmp}/napari-hecktor-sample.png"
    echo "[setup] no display found: starting napari on a virtual screen and saving $shot"
    exec xvfb-run -a -s "-screen 0 1600x1000x24" "$venv/bin/hecktor" view --screenshot "$shot"
    ;;
  test)
    echo "[setup] lint (ruff)"
    "$venv/bin/ruff" check .
    echo "[setup] tests"
    if have_display; then
      exec "$venv/bin/python" -m pytest "${@:2}"
    fi
    exec xvfb-run -a -s "-screen 0 1600x1000x24" "$venv/bin/python" -m pytest "${@:2}"
    ;;
  *)
    echo "usage: bash scripts/setup.sh app|test [pytest args]" >&2
    exit 2
    ;;
esac
