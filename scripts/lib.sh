# shellcheck shell=bash
# Shared helpers for scripts/stack, scripts/test and scripts/bench.
#
# Sourced, never run. Owns: finding the repository root and the toolchain,
# installing missing Debian packages, waiting for services, and stopping
# processes by recorded PID (never by name).

# The repository root (the directory holding Cargo.toml).
KG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KG_ROOT

kg_info() { printf '==> %s\n' "$*" >&2; }
kg_warn() { printf 'WARNING: %s\n' "$*" >&2; }
kg_die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Puts rustup's cargo and the sbin directories (nutcracker lives in
# /usr/sbin) on PATH when they exist.
kg_setup_path() {
    local dir
    for dir in "$HOME/.cargo/bin" /usr/local/sbin /usr/sbin /sbin; do
        if [[ -d $dir && ":$PATH:" != *":$dir:"* ]]; then
            PATH="$dir:$PATH"
        fi
    done
    export PATH
}

# kg_ensure_commands CMD:PACKAGE...
# Installs, with apt-get, the Debian package of every CMD not on PATH.
# Runs `apt-get update` first; uses sudo when not root.
kg_ensure_commands() {
    local spec cmd pkg
    local -a missing_cmds=() packages=()
    for spec in "$@"; do
        cmd="${spec%%:*}"
        pkg="${spec#*:}"
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing_cmds+=("$cmd")
            if [[ " ${packages[*]} " != *" $pkg "* ]]; then
                packages+=("$pkg")
            fi
        fi
    done
    if ((${#packages[@]} == 0)); then
        return 0
    fi

    if ! command -v apt-get >/dev/null 2>&1; then
        kg_die "missing ${missing_cmds[*]}; no apt-get on this machine: install the packages ${packages[*]} (or equivalents) and retry"
    fi
    local -a as_root=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            as_root=(sudo)
        else
            kg_die "missing ${missing_cmds[*]}; run as root or install sudo, or install them yourself: apt-get install ${packages[*]}"
        fi
    fi
    kg_info "installing ${packages[*]} (missing: ${missing_cmds[*]})"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        kg_die "apt-get update failed"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" ||
        kg_die "apt-get install ${packages[*]} failed"
    kg_setup_path
    for cmd in "${missing_cmds[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || kg_die "$cmd is still missing after installing ${packages[*]}"
    done
}

# Installs Redis (server, Sentinel, CLI tools incl. redis-benchmark) when missing.
kg_ensure_redis() {
    kg_ensure_commands redis-server:redis-server redis-sentinel:redis-sentinel \
        redis-cli:redis-tools redis-benchmark:redis-tools
}

# Fails clearly when cargo is absent (Debian's cargo is older than our MSRV).
kg_require_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        kg_die "cargo not found (looked on PATH and in \$HOME/.cargo/bin); install Rust >= 1.80 with rustup: https://rustup.rs"
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
kg_port_listening() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when `redis-cli -p PORT [-a PASSWORD] PING` answers PONG.
kg_redis_pong() {
    local port="$1" password="${2:-}"
    local -a auth=()
    [[ -n $password ]] && auth=(-a "$password" --no-auth-warning)
    [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$port" "${auth[@]}" PING 2>/dev/null)" == PONG ]]
}

# The HTTP status code of GET http://127.0.0.1:PORT/PATH, or nothing.
# Plain bash, so no curl is needed.
kg_http_status() {
    local port="$1" path="$2"
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        IFS=" " read -r _ code _ <&3 && printf "%s\n" "$code"
    ' _ "$port" "$path" 2>/dev/null || true
}

# True when PID is running (a zombie, dead but not yet reaped, counts as exited).
kg_pid_alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }" # the state follows the parenthesised command name
    [[ -n $stat && ${stat%% *} != Z ]]
}

# True when PID is a live process whose command line contains WORD.
# The WORD check keeps a recycled PID from being mistaken for ours.
kg_pid_is() {
    local pid="$1" word="$2" cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kg_pid_alive "$pid" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ $cmdline == *"$word"* ]]
}

# kg_wait_until SECONDS DESCRIPTION COMMAND...
# Polls COMMAND every 0.2 s until it succeeds; fails after SECONDS.
kg_wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            kg_warn "gave up after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# kg_stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL. Only the given PID.
kg_stop_pid() {
    local pid="$1" name="$2" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kg_pid_alive "$pid" || return 0
        sleep 0.2
    done
    kg_warn "$name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 25; i++)); do
        kg_pid_alive "$pid" || return 0
        sleep 0.2
    done
    kg_warn "$name (pid $pid) is still running"
    return 1
}

# Installs redis-py (the Python client the client-library test drives) with
# pip when `import redis` fails; falls back to --break-system-packages for a
# Debian system Python that refuses plain pip installs.
kg_ensure_redis_py() {
    command -v python3 >/dev/null 2>&1 || kg_die "python3 is missing: install it (apt-get install python3 python3-pip)"
    python3 -c 'import redis, sys; sys.exit(0 if int(redis.__version__.split(".")[0]) >= 5 else 1)' 2>/dev/null && return 0
    kg_info "installing redis-py (pip) for tests/python_client.rs and tests/cluster_emulation.rs"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        kg_ensure_commands pip3:python3-pip
    fi
    python3 -m pip install --quiet --disable-pip-version-check 'redis>=5' 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'redis>=5' ||
        kg_die "could not install redis-py with pip"
}


# Installs what tests/node_client.rs drives: Node.js and npm (Debian
# packages) when missing, then the ioredis versions pinned in
# tests/node/package-lock.json (`npm ci` into tests/node/node_modules) when
# any installed package is missing or differs from the lock file.
kg_ensure_ioredis() {
    kg_ensure_commands node:nodejs npm:npm
    local dir="$KG_ROOT/tests/node"
    # shellcheck disable=SC2016 # evaluated by node
    node -e '
        const dir = process.argv[1];
        const lock = require(dir + "/package-lock.json");
        for (const [path, entry] of Object.entries(lock.packages)) {
            if (path === "") continue;
            const installed = require(dir + "/" + path + "/package.json");
            if (installed.version !== entry.version) process.exit(1);
        }
    ' "$dir" 2>/dev/null && return 0
    kg_info "installing ioredis (npm ci in tests/node) for tests/node_client.rs and tests/cluster_emulation.rs"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error ||
        kg_die "npm ci in $dir failed"
}
