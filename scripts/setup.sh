#!/usr/bin/env bash
# Install what the tests and the bench need (Debian bookworm). Idempotent and fast when
# everything is already present: nothing is downloaded unless a command or package is missing.
#
#   curl                         the demo's client (and the HTTPS tests')
#   openssl                      the HTTPS tests: test certificates and `openssl s_client`
#   nginx                        the bench's baseline (we run our own instances with our own
#                                config; the distro service is stopped and disabled)
#   wrk                          `cargo xtask flamegraph`'s load (the bench uses edgeplane-load)
#   valgrind                     `cargo xtask bench --callgrind`: instructions per request
#   linux-perf                   perf, for `cargo xtask flamegraph` (priority optional: not on a
#                                fresh Debian install)
#   fuse3, libfuse3-dev, pkg-config   fusermount3 and the headers the `fuser` crate builds against
#   iproute2 (ip), ethtool       the XDP network-namespace tests and the veth drop bench
#   nftables (nft)               the bench's baseline for the XDP drop rate
#   bird2 (bird, birdc)          the ISP router the BGP tests peer with (in a network namespace)
#   gobgpd (gobgpd, gobgp)       a second BGP implementation the BGP tests peer with
#   python3-venv                 a virtualenv for moto (below), when moto_server is missing
#   tmux                         tests/top.rs drives `edgeplane top` in a tmux pane
#   systemd (systemd-analyze), passwd (useradd)   tests/package.rs: the .deb
#                                installed into a scratch root, its units verified
#   cargo-deb (cargo install)    builds the .deb (`cargo xtask deb`, tests/package.rs); at the end
#   qemu-system-x86, busybox-static, cpio, kmod, linux-image-amd64
#                                `cargo xtask vmtest`: a Debian 6.1 kernel with the tls module,
#                                booted under qemu (TCG) from an initramfs the harness builds
#                                (installing the kernel package only adds files to /boot and
#                                /lib/modules; the running kernel is not changed)
#   testssl.sh (testssl)         `cargo xtask testssl`: a scan of the HTTPS listener
#   postgresql                   the control service's shared store: the store tests and the
#                                two-instance e2e test start their own server in a temporary
#                                directory (/usr/lib/postgresql/15/bin: initdb, pg_ctl; as
#                                `nobody` when run as root); the distro cluster is not used
#   cargo-fuzz (cargo install)   `cargo xtask fuzz`: the fuzz targets under fuzz/; at the end
#   ffmpeg                       `edgeplane cloud gen-catalog --encode` (playable titles)
#   chromium, chromium-driver (chromedriver), npm
#                                `cargo xtask player-test`: headless Chromium driven over WebDriver
#   dashjs, hls.js (npm)         the players of `cargo xtask player-test`, into
#                                /var/cache/edgeplane/npm (the control service's default
#                                `steering.player_assets`); never fetched from a CDN at run time
# and, through rustup, the pinned nightly that builds the eBPF programs (see the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi

# command-name:package pairs; a package is needed when its command is missing.
commands=(curl:curl openssl:openssl nginx:nginx wrk:wrk valgrind:valgrind perf:linux-perf fusermount3:fuse3 pkg-config:pkg-config taskset:util-linux
    ip:iproute2 nft:nftables ethtool:ethtool bird:bird2 gobgpd:gobgpd
    tmux:tmux systemd-analyze:systemd useradd:passwd
    qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio kmod:kmod testssl:testssl.sh
    ffmpeg:ffmpeg chromium:chromium chromedriver:chromium-driver npm:npm)
# packages without a command to probe.
libraries=(libfuse3-dev postgresql)

missing=()
for pair in "${commands[@]}"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    # nginx lives in /usr/sbin, which may not be on a non-root PATH.
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$cmd ]] && [[ ! -x /sbin/$cmd ]]; then
        missing+=("$pkg")
    fi
done
for pkg in "${libraries[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
# A kernel for the VM test (any /boot/vmlinuz-* with modules will do).
if ! compgen -G '/boot/vmlinuz-*' >/dev/null; then
    missing+=(linux-image-amd64)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "setup: all tools present"
else
    echo "setup: installing ${missing[*]}"
    # Keep package maintainer scripts from starting services (the nginx package would start
    # a daemon on port 80). Only install our policy file if there is none, and remove it after.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        own_policy=1
    fi
    cleanup() {
        if [[ $own_policy -eq 1 ]]; then
            $SUDO rm -f "$policy"
        fi
    }
    trap cleanup EXIT
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    cleanup
    trap - EXIT
fi

# Whatever happened above (or on an earlier run), make sure the distro nginx service is not
# running and will not start at boot: the bench runs its own nginx with its own config.
# Disabling works without a running systemd (it edits the unit and rc.d links); only do it
# while the service is still enabled, so repeated runs stay quiet and fast.
if command -v systemctl >/dev/null 2>&1 && [[ -e /etc/systemd/system/multi-user.target.wants/nginx.service ]]; then
    $SUDO systemctl disable nginx >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/nginx ]] && compgen -G '/etc/rc[2-5].d/S*nginx' >/dev/null; then
    $SUDO update-rc.d nginx disable >/dev/null 2>&1 || true
fi
if [[ -d /run/systemd/system ]] && systemctl is-active --quiet nginx 2>/dev/null; then
    $SUDO systemctl stop nginx || true
fi
# A daemon started with the default config writes /run/nginx.pid.
if [[ -s /run/nginx.pid ]]; then
    pid=$(cat /run/nginx.pid)
    if [[ $pid =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == nginx ]]; then
        echo "setup: stopping system nginx (pid $pid)"
        $SUDO kill -QUIT "$pid" || true
        for _ in $(seq 50); do
            [[ -e /proc/$pid ]] || break
            sleep 0.1
        done
    fi
fi

# The eBPF programs (ebpf/edgeplane-ebpf) build with the nightly pinned in its
# rust-toolchain.toml, with rust-src (for -Z build-std=core) and llvm-tools (llc lowers the
# LTO'd bitcode to a BPF object). Nothing else: no bpf-linker, no system LLVM (docs/xdp.md,
# "Build", says why). Installed only when the toolchain or a component is missing.
toolchain_file=ebpf/edgeplane-ebpf/rust-toolchain.toml
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$toolchain_file")
if [[ -z $toolchain ]]; then
    echo "setup: no channel in $toolchain_file" >&2
    exit 1
fi
if ! command -v rustup >/dev/null 2>&1; then
    echo "setup: rustup is needed to install the eBPF toolchain $toolchain (https://rustup.rs)" >&2
    exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')
components=(rust-src llvm-tools clippy)
sysroot=$(RUSTUP_AUTO_INSTALL=0 rustup run "$toolchain" rustc --print sysroot 2>/dev/null || true)
if [[ -z $sysroot ]]; then
    echo "setup: installing eBPF toolchain $toolchain (${components[*]})"
    rustup toolchain install "$toolchain" --profile minimal --no-self-update \
        --component "$(IFS=,; echo "${components[*]}")"
elif [[ ! -d $sysroot/lib/rustlib/src/rust/library/core || ! -x $sysroot/lib/rustlib/$host/bin/llc
        || ! -x $sysroot/bin/cargo-clippy ]]; then
    echo "setup: adding ${components[*]} to $toolchain"
    rustup component add --toolchain "$toolchain" "${components[@]}"
else
    echo "setup: eBPF toolchain $toolchain present"
fi

# The S3 origin of the control tests: moto's server (what AWS users run to simulate S3), from
# PyPI into a virtualenv of its own, linked onto PATH. Skipped when moto_server is already there.
if command -v moto_server >/dev/null 2>&1; then
    echo "setup: moto_server present"
else
    venv=/opt/edgeplane-moto
    echo "setup: installing moto[server] into $venv"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends python3-venv
    fi
    $SUDO python3 -m venv "$venv"
    $SUDO "$venv/bin/pip" install -q 'moto[server]'
    $SUDO ln -sf "$venv/bin/moto_server" /usr/local/bin/moto_server
fi

# The players of `cargo xtask player-test` (dash.js is published as `dashjs`; the npm name
# `dash.js` is an unrelated package), pinned, into a cache directory outside the repository so a
# fresh clone or `cargo clean` does not fetch them again. Only when a pinned version is missing.
npm_dir=/var/cache/edgeplane/npm
npm_want=(dashjs@5.2.1 hls.js@1.7.4)
npm_missing=0
for spec in "${npm_want[@]}"; do
    name=${spec%@*}
    version=${spec##*@}
    have=$(sed -n 's/^ *"version": *"\(.*\)".*/\1/p' "$npm_dir/node_modules/$name/package.json" 2>/dev/null | head -1)
    if [[ $have != "$version" ]]; then
        npm_missing=1
    fi
done
if [[ $npm_missing -eq 1 ]]; then
    echo "setup: installing ${npm_want[*]} into $npm_dir"
    $SUDO mkdir -p "$npm_dir"
    $SUDO npm install --silent --no-audit --no-fund --prefix "$npm_dir" "${npm_want[@]}"
else
    echo "setup: dashjs and hls.js present in $npm_dir"
fi

# The .deb (tests/package.rs, `cargo xtask deb`): cargo-deb, from crates.io, only when missing
# (about 2 minutes to build on 2 cores).
if cargo deb --version >/dev/null 2>&1; then
    echo "setup: cargo-deb present"
else
    echo "setup: installing cargo-deb"
    cargo install cargo-deb --locked --quiet
fi

# The fuzz targets (fuzz/, `cargo xtask fuzz`): cargo-fuzz, from crates.io, only when missing
# (about 1.5 minutes to build on 2 cores). It drives the pinned nightly installed above.
if cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: cargo-fuzz present"
else
    echo "setup: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
