#!/usr/bin/env bash
# Build .gpu/ at the repo root: everything the GPU machine lacks to run tests/gpu offline.
#
# The GPU machine has no network, no CRIU and no Jupyter stack, so this runs here and the device
# run carries the result (`carry: [".gpu"]`). Layout:
#   .gpu/criu/criu       wrapper that runs criu.bin with its own libs (no LD_LIBRARY_PATH leaks
#                        into Python or the kernel, whose libffi/libgmp must stay the device's own)
#   .gpu/criu/criu.bin   copy of a CRIU >= 4.2 built here. Debian 12's 3.17 fails on kernel 6.18
#                        (vDSO), and 4.1.1 cannot dump an ipykernel as root there: since Linux 6.16
#                        getsockopt(SO_PASSCRED) on TCP sockets is EOPNOTSUPP ("Can't get 1:16 opt")
#   .gpu/criu/lib/       every shared library criu.bin needs except glibc and the loader
#   .gpu/whl/            cp312 manylinux / py3-none-any wheels the device does not have
# Usage: tests/gpu/prepare_device_bundle.sh [CRIU_BINARY]
#        (default: $CRIU_BINARY, else the first of /opt/criu421/criu /usr/local/sbin/criu)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/.gpu"
criu_src="${1:-${CRIU_BINARY:-}}"
if [ -z "$criu_src" ]; then
  for c in /opt/criu421/criu /usr/local/sbin/criu; do
    [ -x "$c" ] && { criu_src="$c"; break; }
  done
fi
[ -x "$criu_src" ] || { echo "error: no CRIU binary (pass one as \$1)" >&2; exit 1; }
version="$("$criu_src" --version | awk '/^Version/{print $2}')"
case "$version" in
  4.[2-9]*|4.[1-9][0-9]*|[5-9]*) ;;
  *) echo "warning: CRIU $version cannot dump a root ipykernel on Linux >= 6.16; use >= 4.2" >&2 ;;
esac
echo "CRIU $version from $criu_src"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3

rm -rf "$out"
mkdir -p "$out/criu/lib" "$out/whl"

# --- CRIU and its libraries -------------------------------------------------------------------
cp "$criu_src" "$out/criu/criu.bin"
ldd "$criu_src" | awk '/=> \//{print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|ld-linux*|libpthread.so.*|libdl.so.*|librt.so.*|libm.so.*) continue ;;
  esac
  cp -L "$lib" "$out/criu/lib/"
done
cat >"$out/criu/criu" <<'WRAP'
#!/bin/sh
# Runs the carried CRIU with the libraries it was built against, and only CRIU.
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/criu.bin" "$@"
WRAP
chmod 0755 "$out/criu/criu" "$out/criu/criu.bin"

# --- Python wheels (versions pinned to what the project's .venv runs) ---------------------------
# The device image already has: packaging psutil pygments python-dateutil six typing-extensions
# pyyaml werkzeug jinja2 markupsafe click (see /work/.library/device/KINDS.md).
pure=(
  ipykernel==7.4.0 ipython==9.18.1 ipython-pygments-lexers==1.1.1 jupyter-client==8.10.0
  jupyter-core==5.9.1 comm==0.2.3 matplotlib-inline==0.2.2 nest-asyncio2==1.7.4 traitlets==5.16.1
  platformdirs==4.14.8 prompt-toolkit==3.0.53 wcwidth==0.9.4 jedi==0.20.1 parso==0.8.7
  stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2 pure-eval==0.2.4 pexpect==4.9.0
  ptyprocess==0.7.0 flask==3.1.3 blinker itsdangerous
)
binary=(pyzmq==27.3.0 tornado==6.6.1 debugpy==1.8.22 zstandard==0.25.0)
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do
  plat+=(--platform "$p")
done
common=(download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --abi cp312 --abi abi3 --abi none -d "$out/whl")
quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
"$py" -m pip -q "${common[@]}" "${plat[@]}" "${binary[@]}" 2> >(quiet)
"$py" -m pip -q "${common[@]}" --platform any "${pure[@]}" 2> >(quiet)

du -sh "$out" "$out/criu" "$out/whl"
size_kb=$(du -sk "$out" | cut -f1)
if [ "$size_kb" -gt $((60 * 1024)) ]; then
  echo "error: .gpu is ${size_kb} KiB, over the 60 MiB budget" >&2
  exit 1
fi
ls "$out/whl"
