#!/usr/bin/env bash
# Install the pinned CRIU on this Debian host with the ansible/criu.yml playbook,
# reaching nothing but PyPI and Debian's archive:
#   1. an Ansible virtualenv ($JUSNAP_ANSIBLE_VENV, default /opt/jusnap-ansible)
#      with the versions pinned in ansible/requirements.txt;
#   2. CRIU's upstream source, taken from Debian's source package (testing/unstable) (its
#      orig tarball is upstream's release) into /var/cache/jusnap;
#   3. the playbook, building from that tarball instead of GitHub.
# Idempotent and non-interactive; run as root. A second run changes nothing.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${JUSNAP_ANSIBLE_VENV:-/opt/jusnap-ansible}
CACHE_DIR=/var/cache/jusnap
CRIU_DEB_VERSION=4.2.1-1
CRIU_ORIG=criu_4.2.1.orig.tar.xz
CRIU_ORIG_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
# 4.2.1 is the first CRIU that dumps TCP sockets on Linux >= 6.16 (SO_PASSCRED is
# AF_UNIX-only there); Debian carries it in testing and unstable.
SRC_SUITE=forky
SRC_SUITES="forky sid"
SRC_FILE=/etc/apt/sources.list.d/jusnap-criu-src.sources

export DEBIAN_FRONTEND=noninteractive
exec </dev/null

log() { printf 'install-criu: %s\n' "$*"; }
die() {
	printf 'install-criu: error: %s\n' "$*" >&2
	exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- 1. Ansible virtualenv ---------------------------------------------------
ensure_venv() {
	if [[ ! -x $VENV/bin/python ]]; then
		if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
			log "installing python3-venv"
			apt-get update -qq
			apt-get install -y -qq python3-venv >/dev/null
		fi
		log "creating virtualenv $VENV"
		/usr/bin/python3 -m venv "$VENV"
	fi
	log "installing ansible/requirements.txt into $VENV"
	"$VENV/bin/python" -m pip install -qq --disable-pip-version-check \
		-r "$REPO_ROOT/ansible/requirements.txt"
	"$VENV/bin/python" -c 'import ansible_collections.community.general' 2>/dev/null ||
		die "collection community.general is missing from $VENV"
}

# --- 2. CRIU source from Debian's source package --------------------------
orig_ok() {
	[[ -f $CACHE_DIR/$CRIU_ORIG ]] &&
		echo "$CRIU_ORIG_SHA256  $CACHE_DIR/$CRIU_ORIG" | sha256sum --check --status
}

# True when some enabled apt source already has deb-src for $SRC_SUITE.
have_deb_src() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		grep -Eq "^[[:space:]]*deb-src[[:space:]].*[[:space:]]$SRC_SUITE([[:space:]]|$)" "$f" && return 0
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		awk -v suite="$SRC_SUITE" '
			BEGIN { RS = "" }
			/(^|\n)Types:[^\n]*deb-src/ && $0 ~ "(^|\n)Suites:[^\n]*[ \t]" suite "([ \t]|\n|$)" \
				&& !/(^|\n)Enabled:[ \t]*no/ { found = 1 }
			END { exit !found }' "$f" && return 0
	done
	return 1
}

# Write a deb-src entry for $SRC_SUITE with the URI of the machine's own Debian source.
add_deb_src() {
	local main=/etc/apt/sources.list.d/debian.sources uri
	if [[ -f $main ]]; then
		awk 'BEGIN { RS = "" } NR == 1 { print; exit }' "$main" |
			sed -e "s/^Types:.*/Types: deb-src/" -e "s/^Suites:.*/Suites: $SRC_SUITES/" >"$SRC_FILE"
	else
		uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
			/etc/apt/sources.list 2>/dev/null || true)
		[[ -n $uri ]] || die "no Debian apt source found to derive a deb-src entry from"
		printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\n' "$uri" "$SRC_SUITES" >"$SRC_FILE"
	fi
	log "added $SRC_FILE"
}

fetch_criu_source() {
	if orig_ok; then
		log "CRIU source present: $CACHE_DIR/$CRIU_ORIG"
		return
	fi
	have_deb_src || add_deb_src
	log "fetching $CRIU_ORIG from Debian's source package criu $CRIU_DEB_VERSION"
	apt-get update -qq
	mkdir -p "$CACHE_DIR"
	local apt_log=$CACHE_DIR/apt-get-source.log
	# The .dsc and .debian.tar.xz may 404 (non-zero exit); only the orig tarball matters.
	(cd "$CACHE_DIR" && apt-get source --download-only "criu=$CRIU_DEB_VERSION") >"$apt_log" 2>&1 || true
	if ! orig_ok; then
		tail -n 20 "$apt_log" >&2
		die "$CACHE_DIR/$CRIU_ORIG missing or its sha256 is not $CRIU_ORIG_SHA256"
	fi
	rm -f "$apt_log"
}

# --- 3. Playbook --------------------------------------------------------------
run_playbook() {
	log "running ansible/criu.yml"
	cd "$REPO_ROOT"
	PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 ANSIBLE_DISPLAY_SKIPPED_HOSTS=false \
		ansible-playbook -i localhost, -c local \
		-e ansible_python_interpreter=/usr/bin/python3 \
		-e criu_source_tarball="$CACHE_DIR/$CRIU_ORIG" \
		-e criu_source_tarball_remote_src=true \
		-e criu_source_tarball_checksum="sha256:$CRIU_ORIG_SHA256" \
		ansible/criu.yml
}

ensure_venv
fetch_criu_source
run_playbook
log "done in ${SECONDS}s: $(/usr/local/sbin/criu --version | head -n 1)"
