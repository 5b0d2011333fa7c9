#!/usr/bin/env bash
# The whole airgap round trip on one machine, nothing from the internet but Debian
# packages:
#
#   1. two local registries: "upstream" (plays docker.io) and "isolated";
#   2. real, runnable images built from Debian packages, pushed to upstream;
#   3. airgap pack -> verify -> list -> unpack into the isolated registry;
#   4. the bundle checked to hold the layer the images share once;
#   5. every manifest digest read back from both registries and compared with
#      the one the bundle records;
#   6. with a Docker daemon (the host's, or a private dockerd the demo starts
#      when it runs as root and dockerd is installed): unpack --start-registry
#      onto a host with no registry, the digests compared again, then unpack
#      --load and a loaded image run with docker run.
#
# Run it as root (or with sudo) from anywhere: bash scripts/demo.sh
# Everything it makes is under demo-work/, wiped at each start.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_NAME=demo
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK=demo-work
BUNDLE=$WORK/bundle.tar.zst
# What the demo pushes upstream and expects to find, digest for digest, after
# unpack: the two images of manifests/demo.yaml and its registry image.
IMAGES=(library/busybox:latest library/hello:1.0 library/registry:2)
# Every manifest kind, so a registry serves each one as it was pushed.
ACCEPT="application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json"
# What /bin/hello of the hello image prints.
HELLO_TEXT="hello from the far side of the air gap"
# The registry container unpack --start-registry runs, and the prefix --load
# puts before every name, so a host daemon's own busybox keeps its tag.
DEMO_CONTAINER=airgap-demo-registry
DOCKER_PREFIX=airgap-demo
# The name under which --start-registry loads the bundled registry image, and
# the image ID it had before (restored at exit, for a host daemon's sake).
REGISTRY_IMAGE=library/registry:2
REGISTRY_IMAGE_BEFORE=
DOCKER_USED=false
DOCKER_SUMMARY="the Docker host part skipped (no daemon)"

# The registries, the container and any dockerd the demo started are stopped
# however it ends: success, failure, Ctrl-C or kill (a signal becomes an exit,
# so the EXIT trap runs).
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Debian packages into root filesystems ------------------------------------

# Downloads .debs into $WORK/debs; refreshes the package lists if they are stale.
download_debs() {
    mkdir -p "$WORK/debs"
    if ! (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$@")
    then
        log "apt-get download failed; refreshing the package lists once"
        apt_get update
        (cd "$WORK/debs" && apt-get download -qq -o APT::Sandbox::User=root "$@")
    fi
}

# extract_deb PACKAGE: unpacks its .deb under $WORK/pkg/PACKAGE, prints that path.
extract_deb() {
    local dest=$WORK/pkg/$1
    local debs=("$WORK/debs/$1"_*.deb)
    mkdir -p "$dest"
    dpkg-deb -x "${debs[0]}" "$dest"
    printf '%s\n' "$dest"
}

# busybox_rootfs DIR: /bin/busybox with a symlink per applet, and a minimal /etc.
busybox_rootfs() {
    local dir=$1 pkg applet
    pkg=$(extract_deb busybox-static)
    mkdir -p "$dir"/{bin,etc,root,tmp,proc,sys,dev} "$dir/usr/share/doc/busybox"
    chmod 1777 "$dir/tmp"
    cp "$pkg/bin/busybox" "$dir/bin/busybox"
    cp "$pkg/usr/share/doc/busybox-static/copyright" "$dir/usr/share/doc/busybox/"
    for applet in $("$dir/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$dir/bin/$applet"
    done

    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$dir/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$dir/etc/group"
}

# hello_layer DIR: the one file the hello image adds to busybox.
hello_layer() {
    local dir=$1
    mkdir -p "$dir/bin"
    printf '%s\n' '#!/bin/sh' "echo \"$HELLO_TEXT\"" >"$dir/bin/hello"
    chmod 755 "$dir/bin/hello"
}

# registry_layer DIR: Debian's registry binary as registry:2 lays it out, with
# the shared libraries it links to, taken from Debian's libc6.
registry_layer() {
    local dir=$1 pkg libc libs lib
    pkg=$(extract_deb docker-registry)
    libc=$(extract_deb libc6)
    mkdir -p "$dir/bin" "$dir/etc/docker/registry" "$dir/var/lib/registry"
    cp "$pkg/usr/bin/docker-registry" "$dir/bin/registry"
    cat >"$dir/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
EOF

    libs=$(linked_libraries "$dir/bin/registry")
    log "  the registry binary links: ${libs:-nothing (static)}"
    for lib in $libs; do
        [[ -e $libc$lib || -L $libc$lib ]] || die "$lib is not in libc6"
        copy_with_target "$libc" "$lib" "$dir"
    done
}

# linked_libraries BINARY: the absolute paths ldd names, on one line; nothing for
# a static binary.
linked_libraries() {
    if file -L "$1" | grep -q 'statically linked'; then
        return 0
    fi
    ldd "$1" | grep -o '/[^ ]*' | sort -u | paste -sd ' '
}

# copy_with_target TREE PATH DEST: copies TREE/PATH to DEST/PATH; a symlink
# brings its target along.
copy_with_target() {
    local tree=$1 path=$2 dest=$3 target
    mkdir -p "$dest$(dirname "$path")"
    cp -P "$tree$path" "$dest$path"
    if [[ -L $tree$path ]]; then
        target=$(readlink "$tree$path")
        [[ $target == /* ]] || target=$(dirname "$path")/$target
        copy_with_target "$tree" "$target" "$dest"
    fi
}

# stage IMAGE LAYER_DIR...: the layers merged under $WORK/stage/IMAGE, as a
# container would see them, for the smoke test. The image itself is pushed layer
# by layer, so the busybox layer is one blob that three images share.
stage() {
    local dest=$WORK/stage/$1 layer
    shift
    mkdir -p "$dest"
    for layer in "$@"; do
        cp -a "$layer/." "$dest/"
    done
    printf '%s\n' "$dest"
}

# smoke_test ROOTFS COMMAND...: runs COMMAND inside ROOTFS, so a broken image is
# caught before it travels.
smoke_test() {
    local rootfs=$1 out
    shift
    out=$(as_root chroot "$rootfs" "$@" 2>&1) || die "'$*' fails in $rootfs: $out"
    log "  ${rootfs##*/}: $* -> ${out%%$'\n'*}"
}

build_and_push_images() {
    local upstream=$1 busybox hello registry
    log "downloading busybox-static, docker-registry and libc6 from Debian"
    download_debs busybox-static docker-registry libc6

    busybox_rootfs "$WORK/layers/busybox"
    hello_layer "$WORK/layers/hello"
    registry_layer "$WORK/layers/registry"
    busybox=$(stage busybox "$WORK/layers/busybox")
    hello=$(stage hello "$WORK/layers/busybox" "$WORK/layers/hello")
    registry=$(stage registry "$WORK/layers/busybox" "$WORK/layers/registry")

    log "checking the images run"
    smoke_test "$busybox" /bin/sh -c 'echo busybox sh works'
    smoke_test "$hello" /bin/hello
    smoke_test "$registry" /bin/registry --version

    log "pushing them to upstream ($upstream), busybox as the base layer of all"
    push_image "$upstream" library/busybox:latest busybox -- --cmd sh
    push_image "$upstream" library/hello:1.0 busybox hello -- --cmd /bin/hello
    push_image "$upstream" library/registry:2 busybox registry -- \
        --entrypoint "/bin/registry serve /etc/docker/registry/config.yml"
}

# push_image REGISTRY REPO:TAG LAYER... -- [imagebuild options]: an image of the
# layers under $WORK/layers, bottom first.
push_image() {
    local registry=$1 repo=${2%:*} tag=${2##*:} args=() digest
    shift 2
    while (($# > 0)) && [[ $1 != -- ]]; do
        args+=(--dir "$WORK/layers/$1")
        shift
    done
    shift
    digest=$(python tests/imagebuild.py push-dir --registry "$registry" \
        --repo "$repo" --tag "$tag" "${args[@]}" "$@")
    log "  $repo:$tag $digest"
}

# --- reading registries back -------------------------------------------------

# manifest_digest REGISTRY REPO REF: the sha256 of the manifest's bytes as served,
# or nothing when the registry does not have it. The body goes to $WORK/manifests.
manifest_digest() {
    local registry=$1 repo=$2 ref=$3 body
    body=$WORK/manifests/$registry/$repo/$ref.json
    mkdir -p "$(dirname "$body")"
    if curl -fsS --noproxy '*' -H "Accept: $ACCEPT" -o "$body" \
        "http://$registry/v2/$repo/manifests/$ref" 2>/dev/null; then
        printf 'sha256:%s\n' "$(sha256sum "$body" | cut -d' ' -f1)"
    fi
}

# json_lines FIELD: the strings of a JSON list at FIELD of stdin, one a line.
json_lines() {
    python3 -c 'import json, sys
print("\n".join(json.load(sys.stdin).get(sys.argv[1]) or []))' "$1"
}

# show_registry REGISTRY: every repository, tag and digest it holds.
show_registry() {
    local registry=$1 repo tag
    printf '%-20s %-8s %s\n' REPOSITORY TAG DIGEST
    for repo in $(curl -fsS --noproxy '*' "http://$registry/v2/_catalog" |
        json_lines repositories); do
        for tag in $(curl -fsS --noproxy '*' "http://$registry/v2/$repo/tags/list" |
            json_lines tags); do
            printf '%-20s %-8s %s\n' "$repo" "$tag" \
                "$(manifest_digest "$registry" "$repo" "$tag")"
        done
    done
}

# compare_digests UPSTREAM ISOLATED: fails unless every image of IMAGES has the
# same manifest digest upstream, in the bundle's index (airgap list --json) and
# in the isolated registry.
compare_digests() {
    local upstream=$1 isolated=$2 recorded image want listed got bad=0
    recorded=$(airgap list "$BUNDLE" --json | python3 -c 'import json, sys
for image in json.load(sys.stdin)["images"]:
    print(image["target"], image["digest"])')
    for image in "${IMAGES[@]}"; do
        want=$(manifest_digest "$upstream" "${image%:*}" "${image##*:}")
        listed=$(awk -v target="$image" '$1 == target { print $2 }' <<<"$recorded")
        got=$(manifest_digest "$isolated" "${image%:*}" "${image##*:}")
        if [[ -n $want && $listed == "$want" && $got == "$want" ]]; then
            log "  same: $image $want"
        else
            log "  DIFFERENT: $image: upstream ${want:-nothing}," \
                "bundle ${listed:-nothing}, isolated ${got:-nothing}"
            bad=$((bad + 1))
        fi
    done
    ((bad == 0)) || die "$bad of ${#IMAGES[@]} images did not arrive unchanged"
}

# count_blobs UPSTREAM: checks the bundle holds each distinct blob once (every
# manifest, config and layer of IMAGES, however many images share it) and shows
# the shared ones: the busybox layer must be among them.
count_blobs() {
    local upstream=$1 image manifests=() listing stats want refs shared got pair
    for image in "${IMAGES[@]}"; do
        manifests+=("$WORK/manifests/$upstream/${image%:*}/${image##*:}.json")
    done
    stats=$(python3 - "${manifests[@]}" <<'EOF'
import collections, hashlib, json, pathlib, sys
users = collections.defaultdict(list)
for path in map(pathlib.Path, sys.argv[1:]):
    body = path.read_bytes()
    manifest = json.loads(body)
    # The demo pushes single-platform manifests; an index would need its children.
    found = [manifest["config"]] + manifest["layers"]
    digests = ["sha256:" + hashlib.sha256(body).hexdigest()]
    for digest in digests + [d["digest"] for d in found]:
        users[digest].append(path.parent.name)
refs = sum(len(names) for names in users.values())
shared = [f"{d}={','.join(n)}" for d, n in users.items() if len(n) > 1]
print(len(users), refs, *shared)
EOF
    )
    read -r want refs shared <<<"$stats"
    listing=$(zstd -dc "$BUNDLE" | tar -tf -)
    got=$(grep -cE '^blobs/sha256/[0-9a-f]{64}$' <<<"$listing" || true)
    log "bundle: $got blobs for $refs blob references ($want distinct)"
    [[ $got == "$want" ]] || die "the bundle holds $got blobs, expected $want"
    [[ -n $shared ]] || die "no blob is shared: the busybox layer should be"

    for pair in $shared; do
        got=$(grep -c "^blobs/sha256/${pair:7:64}\$" <<<"$listing" || true)
        [[ $got == 1 ]] || die "${pair%%=*} is stored $got times, expected once"
        log "  ${pair%%=*}: shared by ${pair#*=}, stored once"
    done
}

# --- a Docker host -----------------------------------------------------------

# docker_available: true when a Docker daemon answers, the host's or, when none
# does and we are root with dockerd installed, a private one started here.
docker_available() {
    if docker info >/dev/null 2>&1; then
        log "using the Docker daemon at ${DOCKER_HOST:-its default socket}"
        return 0
    fi
    if ((EUID != 0)) || ! command -v dockerd >/dev/null; then
        return 1
    fi
    log "no Docker daemon answers; starting a private dockerd"
    start_dockerd
}

# Notes the image ID now under REGISTRY_IMAGE, then clears the demo's leftovers
# from an earlier run: a container of its name would be reused, on its old port.
prepare_docker() {
    DOCKER_USED=true
    REGISTRY_IMAGE_BEFORE=$(docker image inspect -f '{{.Id}}' "$REGISTRY_IMAGE" \
        2>/dev/null || true)
    docker rm -f "$DEMO_CONTAINER" >/dev/null 2>&1 || true
}

# Removes the registry container and the loaded images, and gives
# REGISTRY_IMAGE back the image it named before the demo.
clean_docker() {
    local image ours
    [[ $DOCKER_USED == true ]] || return 0
    docker rm -f "$DEMO_CONTAINER" >/dev/null 2>&1 || true
    for image in "${IMAGES[@]}"; do
        docker image rm "$DOCKER_PREFIX/$image" >/dev/null 2>&1 || true
    done

    ours=$(docker image inspect -f '{{.Id}}' "$REGISTRY_IMAGE" 2>/dev/null || true)
    if [[ -n $ours && $ours != "$REGISTRY_IMAGE_BEFORE" ]]; then
        if [[ -n $REGISTRY_IMAGE_BEFORE ]]; then
            docker tag "$REGISTRY_IMAGE_BEFORE" "$REGISTRY_IMAGE" || true
        fi
        docker image rm "$ours" >/dev/null 2>&1 || true
    fi
    DOCKER_USED=false
}

cleanup() {
    clean_docker
    stop_registries
    stop_dockerd
}

# image_config UPSTREAM IMAGE: the config digest of IMAGE's manifest as upstream
# served it, which is the image ID Docker must give it.
image_config() {
    python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["config"]["digest"])' \
        "$WORK/manifests/$1/${2%:*}/${2##*:}.json"
}

# run_loaded UPSTREAM: the images --load put into Docker carry the config digests
# upstream has, and they run.
run_loaded() {
    local upstream=$1 image name want got out
    for image in "${IMAGES[@]}"; do
        name=$DOCKER_PREFIX/$image
        want=$(image_config "$upstream" "$image")
        got=$(docker image inspect -f '{{.Id}}' "$name")
        [[ $got == "$want" ]] || die "docker has $name as $got, upstream $want"
        log "  same: $name image ID $got"
    done

    name=$DOCKER_PREFIX/library/hello:1.0
    out=$(docker run --rm --network host "$name")
    [[ $out == "$HELLO_TEXT" ]] || die "docker run $name printed '$out'"
    log "  docker run --rm --network host $name -> $out"
    name=$DOCKER_PREFIX/library/busybox:latest
    out=$(docker run --rm --network host "$name" echo "busybox runs in Docker")
    [[ $out == "busybox runs in Docker" ]] || die "docker run $name printed '$out'"
    log "  docker run --rm --network host $name echo ... -> $out"
}

# demo_docker_host UPSTREAM: the isolated host has Docker and no registry.
demo_docker_host() {
    local upstream=$1 registry
    section "a Docker host with no registry: unpack --start-registry"
    if ! docker_available; then
        log "skipped: no Docker daemon answers, and starting one needs root and dockerd"
        return 0
    fi
    prepare_docker
    registry=127.0.0.1:$(free_port)
    log "airgap unpack --start-registry (nothing listens at $registry)"
    airgap unpack "$BUNDLE" --registry "$registry" --start-registry \
        --registry-network host --registry-name "$DEMO_CONTAINER" \
        --registry-data "$WORK/registry-data"
    log "the registry airgap started from the bundle holds:"
    show_registry "$registry"
    log "digests upstream, in the bundle and in that registry:"
    compare_digests "$upstream" "$registry"

    section "straight into Docker: unpack --load"
    airgap unpack "$BUNDLE" --load --prefix "$DOCKER_PREFIX"
    run_loaded "$upstream"
    log "removing the registry container: docker rm -f $DEMO_CONTAINER"
    docker rm -f "$DEMO_CONTAINER" >/dev/null
    DOCKER_SUMMARY="also in the registry --start-registry ran; --load images run"
}

# --- the demo ----------------------------------------------------------------

main() {
    local upstream isolated
    section "setup: Debian packages, the venv, two local registries"
    log "installing what the demo needs (quick when it is there already)"
    ensure_apt_packages "${AIRGAP_APT_PACKAGES[@]}"
    ensure_venv
    activate_venv
    # A registry container writes its storage as root; a sudo-less rerun needs
    # root to remove it.
    rm -rf "$WORK" 2>/dev/null || as_root rm -rf "$WORK"
    mkdir -p "$WORK"

    start_registry upstream "$WORK/upstream"
    upstream=$REGISTRY_ADDR
    start_registry isolated "$WORK/isolated"
    isolated=$REGISTRY_ADDR

    section "images built from Debian packages, pushed upstream"
    build_and_push_images "$upstream"
    log "upstream holds:"
    show_registry "$upstream"

    section "the connected side: airgap pack, verify, list"
    log "airgap pack (docker.io is served by $upstream)"
    airgap pack manifests/demo.yaml -o "$BUNDLE" --mirror "docker.io=$upstream"
    log "airgap verify"
    airgap verify "$BUNDLE"
    log "airgap list"
    airgap list "$BUNDLE"
    count_blobs "$upstream"

    section "the isolated side: airgap unpack into a running registry"
    log "airgap unpack into the isolated registry ($isolated)"
    airgap unpack "$BUNDLE" --registry "$isolated"

    log "the isolated registry now holds:"
    show_registry "$isolated"
    log "digests upstream, in the bundle and in the isolated registry:"
    compare_digests "$upstream" "$isolated"

    demo_docker_host "$upstream"
    echo "demo: OK, ${#IMAGES[@]} images, digests identical upstream and isolated;" \
        "$DOCKER_SUMMARY"
}

main "$@"
