#!/bin/sh
# Install whale-listen as a systemd service on a Debian-like system. Safe to run again: files
# already in place are left alone and an edited config is never overwritten.
#
#   deploy/install.sh [--root DIR] [--venv VENV | --python PY]
#
#   --root DIR   install into DIR instead of / (a chroot or image being built). The service user
#                is then added by editing DIR/etc/passwd, DIR/etc/group and DIR/etc/shadow, and
#                systemctl is not run: enable the unit inside DIR.
#   --venv VENV  make VENV (e.g. /opt/whale-listen) a virtual environment of /usr/bin/python3,
#                install the package into it and link VENV/bin/whale-listen to
#                /usr/local/bin/whale-listen, where the unit runs it. With --root, DIR/VENV is
#                made so that it runs inside DIR: its scripts name VENV and its interpreter is
#                /usr/bin/python3, which DIR must hold in the same version and architecture.
#   --python PY  instead, install with "PY -m pip install" into an existing interpreter and link
#                its whale-listen script (not with --root: the scripts would name PY, outside DIR).
set -eu

SERVICE=whale-listen
USER_NAME=whale-listen
AUDIO_GID=29 # Debian's fixed gid for "audio", used when the group must be created
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
PY=
VENV=
VENV_PYTHON=/usr/bin/python3 # the buoy's own interpreter, at the same path inside a --root

usage() {
    echo "usage: $0 [--root DIR] [--venv VENV | --python PY]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || usage; PY=$2; shift 2 ;;
    --venv) [ $# -ge 2 ] || usage; VENV=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) usage ;;
    esac
done
[ -z "$PY" ] || [ -z "$VENV" ] || usage
case $ROOT in /*) ;; *) ROOT=$(pwd)/$ROOT ;; esac
ROOT=${ROOT%/}  # "" for the real system, so "$ROOT/etc" is always right
die() { echo "install.sh: $*" >&2; exit 1; }
[ -z "$ROOT" ] || [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
[ -z "$PY" ] || [ -z "$ROOT" ] || die "--python $PY with --root: its scripts would run $PY, which is not in $ROOT; use --venv"
case $VENV in "" | /*) ;; *) die "--venv $VENV: give an absolute path (e.g. /opt/whale-listen)" ;; esac
VENV=${VENV%/}

say() { echo "whale-listen install: $*"; }

# ---- a virtual environment (--venv) ------------------------------------------------------------
if [ -n "$VENV" ]; then
    [ -x "$VENV_PYTHON" ] || die "$VENV_PYTHON not found: apt-get install python3 python3-venv"
    version=$("$VENV_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ -n "$ROOT" ] && [ ! -e "$ROOT/usr/bin/python$version" ]; then
        die "$ROOT has no /usr/bin/python$version for the venv to run: install python3 ($version) in it first"
    fi
    here=$ROOT$VENV # where the venv lies on this machine
    if [ -x "$here/bin/python" ]; then
        say "unchanged venv $here"
    else
        "$VENV_PYTHON" -m venv "$here" || die "cannot make a venv at $here (Debian: apt-get install python3-venv)"
        say "created venv $here"
    fi
    "$here/bin/python" -m pip install --quiet --disable-pip-version-check "$REPO" ||
        die "pip could not install $REPO into $here"
    say "installed whale-listen into $here"
    if [ -n "$ROOT" ]; then
        # The venv was made at $ROOT$VENV but runs at $VENV: scripts, activate files and
        # pyvenv.cfg name the staging path, so rewrite it (bin/python3 already names /usr/bin).
        for f in "$here/pyvenv.cfg" "$here"/bin/*; do
            if [ -f "$f" ] && [ ! -L "$f" ] && grep -IqF "$here" "$f"; then
                sed -i "s|$here|$VENV|g" "$f"
            fi
        done
    fi
    scripts=$VENV/bin
fi

# ---- an existing interpreter (--python) --------------------------------------------------------
if [ -n "$PY" ]; then
    "$PY" -m pip install "$REPO"
    scripts=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
fi

if [ -n "$PY$VENV" ]; then
    target=$scripts/whale-listen
    link=$ROOT/usr/local/bin/whale-listen
    if [ "$target" = /usr/local/bin/whale-listen ]; then
        :
    elif [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
        say "unchanged $link"
    else
        mkdir -p "$ROOT/usr/local/bin"
        ln -sfn "$target" "$link"
        say "linked $link -> $target"
    fi
fi

# ---- the service user ----------------------------------------------------------------------
# First id in the system range (999 down to 100) that no entry in FILE uses.
free_id() {
    awk -F: -v want="${2:-}" '
        { used[$3] = 1 }
        END {
            if (want != "" && !(want in used)) { print want; exit }
            for (id = 999; id >= 100; id--) if (!(id in used)) { print id; exit }
            exit 1
        }' "$1"
}

add_user_in_root() {
    etc=$ROOT/etc
    mkdir -p "$etc"
    [ -e "$etc/passwd" ] || install -m 0644 /dev/null "$etc/passwd"
    [ -e "$etc/group" ] || install -m 0644 /dev/null "$etc/group"
    [ -e "$etc/shadow" ] || install -m 0640 /dev/null "$etc/shadow"
    if ! grep -q '^audio:' "$etc/group"; then
        echo "audio:x:$(free_id "$etc/group" "$AUDIO_GID"):" >>"$etc/group"
        say "added group audio to $etc/group"
    fi
    if ! grep -q "^$USER_NAME:" "$etc/group"; then
        echo "$USER_NAME:x:$(free_id "$etc/group"):" >>"$etc/group"
        say "added group $USER_NAME to $etc/group"
    fi
    gid=$(awk -F: -v g="$USER_NAME" '$1 == g { print $3 }' "$etc/group")
    if ! grep -q "^$USER_NAME:" "$etc/passwd"; then
        uid=$(free_id "$etc/passwd" "$gid")
        echo "$USER_NAME:x:$uid:$gid:whale-listen daemon:/var/lib/$SERVICE:/usr/sbin/nologin" \
            >>"$etc/passwd"
        say "added user $USER_NAME to $etc/passwd"
    fi
    if ! grep -q "^$USER_NAME:" "$etc/shadow"; then
        echo "$USER_NAME:!:::::::" >>"$etc/shadow"
    fi
    # Add the user to audio's member list (4th field) unless already there.
    tmp=$(mktemp) # outside etc, so a run that changes nothing does not touch it
    awk -F: -v OFS=: -v u="$USER_NAME" '
        $1 == "audio" {
            n = split($4, m, ",")
            for (i = 1; i <= n; i++) if (m[i] == u) { print; next }
            $4 = ($4 == "" ? u : $4 "," u)
            changed = 1
        }
        { print }
        END { exit changed ? 0 : 3 }' "$etc/group" >"$tmp" && status=0 || status=$?
    if [ "$status" -eq 0 ]; then
        cat "$tmp" >"$etc/group" # keep the file's inode, owner and mode
        say "added $USER_NAME to group audio"
    elif [ "$status" -ne 3 ]; then
        rm -f "$tmp"
        exit "$status"
    fi
    rm -f "$tmp"
}

add_user_on_system() {
    getent group audio >/dev/null || groupadd --system audio
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --user-group --groups audio --no-create-home \
            --home-dir "/var/lib/$SERVICE" --shell /usr/sbin/nologin \
            --comment "whale-listen daemon" "$USER_NAME"
        say "created user $USER_NAME"
    elif ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx audio; then
        usermod --append --groups audio "$USER_NAME"
        say "added $USER_NAME to group audio"
    fi
}

if [ -n "$ROOT" ]; then add_user_in_root; else add_user_on_system; fi

# ---- files -----------------------------------------------------------------------------------
# install_file SRC DEST MODE: copy unless DEST already has the same content.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        say "unchanged $2"
    else
        install -D -m "$3" "$1" "$2"
        say "installed $2"
    fi
}

install_file "$REPO/deploy/whale-listen.service" "$ROOT/etc/systemd/system/$SERVICE.service" 0644

config=$ROOT/etc/$SERVICE/config.toml
if [ ! -e "$config" ]; then
    install_file "$REPO/deploy/config.example.toml" "$config" 0644
elif cmp -s "$REPO/deploy/config.example.toml" "$config"; then
    say "unchanged $config"
elif [ -f "$config.new" ] && cmp -s "$REPO/deploy/config.example.toml" "$config.new"; then
    say "kept $config (edited); the example is in $config.new"
else
    install -m 0644 "$REPO/deploy/config.example.toml" "$config.new"
    say "kept $config (edited); wrote the new example to $config.new: merge it by hand"
fi

state=$ROOT/var/lib/$SERVICE
if [ -d "$state" ]; then
    say "unchanged $state"
else
    install -d -m 0750 "$state"
    say "created $state"
fi
if [ -z "$ROOT" ]; then
    chown "$USER_NAME:$USER_NAME" "$state"
fi

# ---- systemd -----------------------------------------------------------------------------------
if [ -z "$ROOT" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    else
        say "systemd is not running here: skipped daemon-reload"
    fi
    systemctl enable "$SERVICE"
    say "enabled $SERVICE; start it with: systemctl start $SERVICE"
else
    say "target is $ROOT: run 'systemctl enable $SERVICE' inside it"
fi
