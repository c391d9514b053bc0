#!/usr/bin/env bash
# Build the image's base without a registry: a minimal Debian (python3 + venv) made
# with debootstrap from a Debian mirror, imported into docker or buildah.
#
#   deploy/image/build-base.sh [--engine docker|buildah] [--tag TAG] [--mirror URL]
#                              [--suite SUITE] [--cache DIR] [--ca-cert FILE]...
#
# --ca-cert adds a site CA (PEM) to the image's trust store, for sites whose way to PyPI or to
# their backends passes a TLS-inspecting proxy; pip in the image uses that store (PIP_CERT).
#
# Then build the project's image on it (docs/deploy.md, "Offline sites"):
#   DOCKER_BUILDKIT=0 docker build --network=host --build-arg BASE=lpu-base:bookworm \
#       -f deploy/Dockerfile -t lpu-router:local .
#
# The root filesystem is kept as a tarball in the cache directory ($LPU_IMAGE_CACHE, default
# ~/.cache/lpu-router/image): a second run, or the other engine, only imports it. Delete the
# tarball to take newer Debian packages. Needs root (debootstrap, chroot) and the mirror.
# For buildah, set STORAGE_DRIVER (e.g. vfs) the same way as for the builds that use the base.
set -euo pipefail

engine=docker
suite=bookworm
mirror=http://deb.debian.org/debian
cache=${LPU_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lpu-router/image}
tag=
cas=()

while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --mirror) mirror=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --ca-cert) cas+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-base.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
tag=${tag:-lpu-base:$suite}
case "$engine" in docker|buildah) ;; *) echo "build-base.sh: --engine docker|buildah" >&2; exit 2 ;; esac

# The same PATH and locale as python:3.11-slim, so the Dockerfile behaves alike on both bases.
path_env=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# pip trusts its own bundled CA list unless told otherwise; the system store holds --ca-cert.
pip_cert=/etc/ssl/certs/ca-certificates.crt
tarball=$cache/debian-$suite-python3.tar
if [ ${#cas[@]} -gt 0 ]; then
    # Another set of CAs is another root filesystem: name the tarball after their content.
    tarball=$cache/debian-$suite-python3-$(cat "${cas[@]}" | sha256sum | cut -c1-12).tar
fi

if [ ! -s "$tarball" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build-base.sh: debootstrap needs root (or an existing $tarball)" >&2
        exit 1
    fi
    command -v debootstrap >/dev/null || { echo "build-base.sh: apt-get install debootstrap" >&2; exit 1; }
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.partial"' EXIT
    echo "build-base.sh: debootstrap $suite from $mirror" >&2
    # minbase: dpkg, apt and the Essential set; python3-venv brings ensurepip (Debian's python3
    # refuses system-wide pip installs, PEP 668, so the image installs into a venv).
    debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv \
        "$suite" "$rootfs" "$mirror" >&2
    for ca in "${cas[@]}"; do
        cp "$ca" "$rootfs/usr/local/share/ca-certificates/$(basename "${ca%.*}").crt"
    done
    chroot "$rootfs" update-ca-certificates --fresh >/dev/null
    # Package caches and documentation are dead weight in a container; apt lists are refetched
    # by whoever runs apt-get update in a derived image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/var/log/* "$rootfs"/tmp/*
    # apt in a derived image reads the mirror the base was made from (and its -updates suite).
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" \
        > "$rootfs/etc/apt/sources.list"
    # mktemp made the directory 0700, and it becomes the image's /: an unprivileged user could
    # not reach a single file.
    chmod 755 "$rootfs"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
fi

echo "build-base.sh: importing $tarball as $tag ($engine)" >&2
if [ "$engine" = docker ]; then
    docker import --change "ENV PATH=$path_env" --change "ENV LANG=C.UTF-8" \
        --change "ENV PIP_CERT=$pip_cert" \
        --change 'CMD ["python3"]' "$tarball" "$tag" >/dev/null
else
    ctr=$(buildah from scratch)
    trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
    buildah add "$ctr" "$tarball" / >/dev/null
    buildah config --env "PATH=$path_env" --env LANG=C.UTF-8 --env "PIP_CERT=$pip_cert" \
        --cmd python3 "$ctr"
    buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
    trap - EXIT
fi
echo "$tag"
