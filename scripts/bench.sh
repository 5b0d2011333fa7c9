#!/usr/bin/env bash
# How fast airgap is, and how much memory it takes, next to the manual way of
# doing the same with skopeo, tar and zstd. It measures and prints; it asserts
# nothing about speed.
#
#   1. two loopback registries: "upstream" and "target" (a fresh, empty target
#      for each unpack, so neither finds the other's blobs there);
#   2. three generated images, BENCH_MB in all (default 300), half random bytes
#      and half compressible text, sharing one base layer, pushed upstream;
#   3. under /usr/bin/time -v (wall time, peak RSS of the largest process):
#        pack    airgap pack (zstd -3, all cores)
#                vs skopeo copy docker:// -> oci:DIR, tar -cf - | zstd -T0 -3
#        unpack  airgap unpack into an empty registry
#                vs zstd -dc | tar -x, skopeo copy oci:DIR:REF -> docker://
#        verify  airgap verify
#                vs zstd -dc | tar -x and sha256sum of every blob (same bundle)
#   4. a table: seconds, peak RSS, output size, and airgap/baseline ratios.
#
# Run it as root (or with sudo, for the Debian packages): bash scripts/bench.sh
# BENCH_MB=1000 for bigger images; BENCH_WORK=DIR keeps the files there, in a
# new or earlier bench directory (by default they go to a temporary directory,
# removed at exit).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_NAME=bench
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BENCH_MB=${BENCH_MB:-300}
BENCH_PACKAGES=(docker-registry skopeo zstd time ca-certificates)
# The images, as repository:tag on both registries; a string, so that the
# baseline functions, run in a bash of their own, see it too.
export BENCH_IMAGES="bench/app1:1 bench/app2:1 bench/app3:1"
MARKER=.airgap-bench
KEEP_WORK=${BENCH_WORK:+yes}
WORK=${BENCH_WORK:-}
# Rows of the table: step, tool, seconds, peak RSS in kB, output bytes.
RESULTS=()
# How many images kept their manifest digest, per tool, after unpack.
KEPT=()

trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cleanup() {
    stop_registries
    if [[ -z $KEEP_WORK && -n $WORK && -d $WORK ]]; then
        rm -rf "$WORK"
    fi
}

# --- images ------------------------------------------------------------------

# generate_images REGISTRY: the images of BENCH_IMAGES, built with
# tests/imagebuild.py and pushed. The base layer is 40% of BENCH_MB, each image's
# own layer 20%; every layer is half random bytes, half text of 16 symbols
# (entropy 4 bits a byte, so it compresses about 2:1), in files of 4 MiB.
generate_images() {
    # shellcheck disable=SC2086  # one argument per image
    python - "$1" "$BENCH_MB" $BENCH_IMAGES <<'EOF'
import random
import sys

sys.path.insert(0, "tests")
import imagebuild as ib

registry, total_mb, refs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
FILE = 4 << 20
TEXT = bytes.maketrans(bytes(range(256)), b"0123456789abcdef" * 16)


def files(seed: int, size: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for number, start in enumerate(range(0, size, FILE)):
        chunk = min(FILE, size - start)
        data = rng.randbytes(chunk)
        if number % 2:
            data = data.translate(TEXT)
        out[f"data/{seed}/file-{number:04d}.bin"] = data
    return out


endpoint = ib.Endpoint(f"http://{registry}")
mb = 1 << 20
base = ib.layer(files(0, total_mb * mb * 2 // 5))
for seed, ref in enumerate(refs, start=1):
    own = ib.layer(files(seed, total_mb * mb // 5))
    img = ib.image([base, own], cmd=["/bin/sh"])
    repo, tag = ref.rsplit(":", 1)
    digest = ib.push_image(endpoint, repo, tag, img)
    layers = sum(blob.size for blob in img.layers)
    print(f"bench:   {ref} {digest} ({layers / mb:.0f} MiB of gzip layers)",
          file=sys.stderr)
EOF
}

# --- the manual way ----------------------------------------------------------

# skopeo with no registries.conf of the host (no mirror or alias can redirect
# it), plain HTTP to the loopback registries.
skopeo_copy() {
    CONTAINERS_REGISTRIES_CONF=/dev/null skopeo --insecure-policy copy -q \
        --src-tls-verify=false --dest-tls-verify=false "$@"
}

# baseline_pack UPSTREAM LAYOUT OUT: every image into one OCI layout, then the
# layout into a zstd tar, as one would by hand.
baseline_pack() {
    local upstream=$1 layout=$2 out=$3 image
    for image in $BENCH_IMAGES; do
        skopeo_copy "docker://$upstream/$image" "oci:$layout:$image"
    done
    tar -C "$layout" -cf - . | zstd -q -T0 -3 >"$out"
}

# baseline_unpack BUNDLE DIR TARGET: the layout back out of the tar, then every
# image pushed from it.
baseline_unpack() {
    local bundle=$1 dir=$2 target=$3 image
    mkdir -p "$dir"
    zstd -dc "$bundle" | tar -xf - -C "$dir"
    for image in $BENCH_IMAGES; do
        skopeo_copy "oci:$dir:$image" "docker://$target/$image"
    done
}

# baseline_verify BUNDLE DIR: extracts the bundle and checks that every blob
# hashes to its name. (Checking the manifests' references too would need more.)
baseline_verify() {
    local bundle=$1 dir=$2
    mkdir -p "$dir"
    zstd -dc "$bundle" | tar -xf - -C "$dir"
    (cd "$dir/blobs/sha256" && sha256sum -- * | awk '$1 != $2 { bad++ }
        END { if (bad) { print bad " blobs do not match"; exit 1 } }')
}

# Exported, so that the time command can run them in a bash of their own
# (STRICT: with this script's strict mode).
export -f skopeo_copy baseline_pack baseline_unpack baseline_verify
STRICT=(bash -euo pipefail -c)

# --- measuring ---------------------------------------------------------------

# measure STEP TOOL OUTPUT COMMAND...: runs COMMAND under /usr/bin/time -v and
# adds a row to RESULTS; OUTPUT is a path whose size (du) is the step's output,
# or - for none.
measure() {
    local step=$1 tool=$2 output=$3 name stats bytes=-
    shift 3
    name=$WORK/time/$step-$tool
    mkdir -p "$WORK/time"
    log "$step, $tool: $*"
    if ! /usr/bin/time -v -o "$name.time" "$@" >"$name.out" 2>"$name.err"; then
        tail -n 20 "$name.err" >&2 || true
        KEEP_WORK=yes
        die "$step ($tool) failed; its output is in $name.out and $name.err"
    fi

    stats=$(awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, part, ":"); s = 0
            for (i = 1; i <= n; i++) s = s * 60 + part[i] }
        /Maximum resident set size/ { rss = $2 }
        END { print s, rss }' "$name.time")
    if [[ $output != - ]]; then
        bytes=$(du -sb "$output" | cut -f1)
    fi
    RESULTS+=("$step $tool $stats $bytes")
}

# Prints RESULTS as a table, a ratio row under each step.
print_table() {
    printf '%s\n' "${RESULTS[@]}" | awk '
        function mb(x) { return x == "-" ? "-" : sprintf("%.1f", x / 1048576) }
        function ratio(a, b) { return (b + 0 > 0) ? sprintf("%.2f", a / b) : "-" }
        BEGIN {
            printf "%-8s %-10s %9s %12s %10s\n", "step", "tool", "seconds",
                "peak RSS MB", "output MB"
        }
        {
            printf "%-8s %-10s %9.2f %12.1f %10s\n", $1, $2, $3, $4 / 1024, mb($5)
            secs[$1, $2] = $3; rss[$1, $2] = $4; out[$1, $2] = $5
            if (!($1 in seen)) { seen[$1] = 1; order[++steps] = $1 }
        }
        END {
            printf "\nairgap/baseline ratios (below 1: airgap is faster, smaller)\n"
            printf "%-8s %9s %12s %10s\n", "step", "seconds", "peak RSS", "output"
            for (i = 1; i <= steps; i++) {
                s = order[i]
                o = (out[s, "airgap"] == "-") ? "-" : \
                    ratio(out[s, "airgap"], out[s, "baseline"])
                printf "%-8s %9s %12s %10s\n", s,
                    ratio(secs[s, "airgap"], secs[s, "baseline"]),
                    ratio(rss[s, "airgap"], rss[s, "baseline"]), o
            }
        }'
}

# manifest_digest REGISTRY REPO:TAG: the sha256 of the manifest as served.
manifest_digest() {
    curl -fsS --noproxy '*' \
        -H "Accept: application/vnd.docker.distribution.manifest.v2+json" \
        -H "Accept: application/vnd.oci.image.manifest.v1+json" \
        "http://$1/v2/${2%:*}/manifests/${2##*:}" | sha256sum | cut -d' ' -f1
}

# count_kept TOOL UPSTREAM TARGET: notes how many images TARGET serves with the
# manifest digest upstream has.
count_kept() {
    local tool=$1 upstream=$2 target=$3 image same=0 total=0
    for image in $BENCH_IMAGES; do
        total=$((total + 1))
        if [[ $(manifest_digest "$target" "$image") == \
            "$(manifest_digest "$upstream" "$image")" ]]; then
            same=$((same + 1))
        fi
    done
    KEPT+=("$tool $same of $total")
}

# --- the bench ---------------------------------------------------------------

# image_list UPSTREAM FILE: the images for airgap pack, no registry image (the
# baseline carries none either).
image_list() {
    local upstream=$1 image
    {
        echo "registry-image: false"
        echo "images:"
        for image in $BENCH_IMAGES; do
            echo "  - $upstream/$image"
        done
    } >"$2"
}

run_bench() {
    local upstream=$1 target
    section "pack: registry -> bundle"
    image_list "$upstream" "$WORK/images.yaml"
    measure pack airgap "$WORK/airgap.tar.zst" \
        airgap pack -q "$WORK/images.yaml" -o "$WORK/airgap.tar.zst"
    measure pack baseline "$WORK/baseline.tar.zst" \
        "${STRICT[@]}" 'baseline_pack "$@"' _ "$upstream" "$WORK/oci" \
        "$WORK/baseline.tar.zst"

    section "unpack: bundle -> empty registry"
    start_registry target-airgap "$WORK/target-airgap"
    target=$REGISTRY_ADDR
    measure unpack airgap "$WORK/target-airgap/storage" \
        airgap unpack -q "$WORK/airgap.tar.zst" --registry "$target"
    count_kept airgap "$upstream" "$target"
    start_registry target-baseline "$WORK/target-baseline"
    target=$REGISTRY_ADDR
    measure unpack baseline "$WORK/target-baseline/storage" \
        "${STRICT[@]}" 'baseline_unpack "$@"' _ "$WORK/baseline.tar.zst" \
        "$WORK/unpacked" "$target"
    count_kept baseline "$upstream" "$target"

    section "verify: the airgap bundle, offline"
    measure verify airgap - airgap verify -q "$WORK/airgap.tar.zst"
    measure verify baseline - \
        "${STRICT[@]}" 'baseline_verify "$@"' _ "$WORK/airgap.tar.zst" "$WORK/checked"
}

# A temporary WORK, or BENCH_WORK emptied when it is new or an earlier bench's.
prepare_work() {
    if [[ -z $WORK ]]; then
        WORK=$(mktemp -d "${TMPDIR:-/tmp}/airgap-bench.XXXXXX")
    elif [[ -d $WORK && ! -e $WORK/$MARKER && -n $(ls -A "$WORK") ]]; then
        KEEP_WORK=yes
        die "BENCH_WORK=$WORK holds files of something else; name a new directory"
    fi
    mkdir -p "$WORK"
    find "$WORK" -mindepth 1 -delete
    touch "$WORK/$MARKER"
}

main() {
    local upstream
    section "setup: Debian packages, the venv, the upstream registry"
    ensure_apt_packages "${BENCH_PACKAGES[@]}"
    ensure_venv
    activate_venv
    prepare_work
    # A cache of its own, so pack fetches every blob as on a first run, and
    # the user's cache is left alone.
    export XDG_CACHE_HOME=$WORK/xdg-cache
    log "working in $WORK; $(nproc) cores; airgap $(airgap --version |
        awk '{ print $NF }'); $(skopeo --version); zstd $(zstd -V | grep -o 'v[0-9.]*')"
    start_registry upstream "$WORK/upstream"
    upstream=$REGISTRY_ADDR

    section "images: 3 of $BENCH_MB MB in all, one base layer shared"
    generate_images "$upstream"
    run_bench "$upstream"

    section "results (BENCH_MB=$BENCH_MB)"
    print_table
    echo
    printf 'manifest digests unchanged from upstream after unpack: %s, %s\n' \
        "${KEPT[@]}"
    echo "(skopeo converts Docker manifests to OCI to write an oci: layout)"
}

main "$@"
