#!/usr/bin/env bash
# Provision this host as a Jusnap appliance with ansible/site.yml (connection local); on Debian
# it reaches nothing but PyPI, npm and Debian's archive:
#   1. the Ansible virtualenv ($JUSNAP_ANSIBLE_VENV, default /opt/jusnap-ansible); on Debian
#      through .ci/install-criu.sh, which also takes CRIU's source from Debian's source package
#      (GitHub is not needed) and builds CRIU; on Ubuntu the criu role downloads it;
#   2. ansible/site.yml against localhost (with that source tarball), plus any extra arguments
#      given to this script (e.g. -e jusnap_hostname=jusnap.example.com);
#   3. the notebook URL and login token.
# Idempotent and non-interactive; run as root. A second run changes nothing.
#
#   sudo .ci/provision.sh                                  # https://localhost/ (self-signed)
#   sudo .ci/provision.sh -e jusnap_hostname=example.com   # + Let's Encrypt certificate
#
# JUSNAP_PROVISION_TEST_DEPS=1 also installs what tests/appliance needs (pebble, chromium,
# certutil, vagrant); JUSNAP_PROVISION_QUICK=1 skips step 1 (the tests' re-runs use it).
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${JUSNAP_ANSIBLE_VENV:-/opt/jusnap-ansible}
# Must match .ci/install-criu.sh.
CRIU_TARBALL=/var/cache/jusnap/criu_4.2.1.orig.tar.xz
CRIU_TARBALL_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
LOG_DIR=${JUSNAP_PROVISION_LOG_DIR:-/var/log/jusnap-provision}

export DEBIAN_FRONTEND=noninteractive
exec </dev/null

log() { printf 'provision: %s\n' "$*"; }
die() {
	printf 'provision: error: %s\n' "$*" >&2
	exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- 0. what tests/appliance needs (optional) --------------------------------------------
if [[ ${JUSNAP_PROVISION_TEST_DEPS:-0} == 1 ]]; then
	missing=()
	for p in pebble chromium libnss3-tools openssl; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	if ((${#missing[@]})); then
		log "installing test dependencies: ${missing[*]}"
		apt-get update -qq
		apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
	# Without its recommended libvirt stack: only `vagrant validate` runs here.
	if ! dpkg-query -W -f='${Status}' vagrant 2>/dev/null | grep -q "ok installed"; then
		log "installing test dependency: vagrant"
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends vagrant >/dev/null
	fi
fi

# --- 1. Ansible and CRIU's source ---------------------------------------------------------
# On Debian, .ci/install-criu.sh makes the Ansible virtualenv, takes CRIU's upstream tarball
# from Debian's source package (no GitHub needed) and builds CRIU. Elsewhere (Ubuntu) only the
# virtualenv is made here and the criu role downloads the release from GitHub.
# shellcheck source=/dev/null
. /etc/os-release
criu_args=()
ensure_venv() {
	if [[ ! -x $VENV/bin/python ]]; then
		if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
			apt-get update -qq
			apt-get install -y -qq python3-venv >/dev/null
		fi
		log "creating virtualenv $VENV"
		/usr/bin/python3 -m venv "$VENV"
	fi
	"$VENV/bin/python" -m pip install -qq --disable-pip-version-check -r "$REPO_ROOT/ansible/requirements.txt"
}
if [[ ${ID:-} == debian ]]; then
	if [[ ${JUSNAP_PROVISION_QUICK:-0} == 1 && -x $VENV/bin/ansible-playbook && -f $CRIU_TARBALL ]]; then
		log "quick: reusing $VENV and $CRIU_TARBALL"
	else
		log "Ansible virtualenv and CRIU (.ci/install-criu.sh)"
		bash "$REPO_ROOT/.ci/install-criu.sh"
	fi
	criu_args=(-e "criu_source_tarball=$CRIU_TARBALL" -e criu_source_tarball_remote_src=true
		-e "criu_source_tarball_checksum=sha256:$CRIU_TARBALL_SHA256")
elif [[ ${JUSNAP_PROVISION_QUICK:-0} == 1 && -x $VENV/bin/ansible-playbook ]]; then
	log "quick: reusing $VENV"
else
	log "Ansible virtualenv $VENV (ansible/requirements.txt)"
	ensure_venv
fi

# --- 2. site.yml --------------------------------------------------------------------------
# The log holds the login URL with Jupyter's token: root only (the directory 0700, each file
# 0600, also those of runs before this rule). Only the log is made under umask 077: Ansible
# itself must keep the usual umask (the kernel user reads the virtualenvs it builds).
install -d -m 0700 "$LOG_DIR"
chmod 0700 "$LOG_DIR"
find "$LOG_DIR" -maxdepth 1 -type f -exec chmod 0600 {} +
log_file=$LOG_DIR/site-$(date +%Y%m%dT%H%M%S).log
(umask 077 && : >"$log_file")
log "running ansible/site.yml (log: $log_file)"
cd "$REPO_ROOT"
set +e
PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 ANSIBLE_DISPLAY_SKIPPED_HOSTS=false \
	ANSIBLE_CONFIG="$REPO_ROOT/ansible/ansible.cfg" \
	ansible-playbook -i localhost, -c local \
	-e ansible_python_interpreter=/usr/bin/python3 \
	"${criu_args[@]}" "$@" ansible/site.yml 2>&1 | tee "$log_file"
rc=${PIPESTATUS[0]}
set -e
((rc == 0)) || die "ansible-playbook failed (rc $rc); see $log_file"

# --- 3. where to go -------------------------------------------------------------------------
log "done in ${SECONDS}s"
url=$(grep -o 'Jusnap is running: [^'"'"'"]*' "$log_file" | tail -n 1 | sed 's/^Jusnap is running: //')
printf '\nJusnap is running.\n  URL:   %s\n  Token: %s (in /etc/jusnap/jupyter-token)\n' \
	"${url:-https://localhost/}" "$(cat /etc/jusnap/jupyter-token 2>/dev/null || echo '?')"
