#!/usr/bin/env bash
# Build the ARM test binaries and run them under qemu-user, once per emulated device.
#
#   targets/cross-test.sh [options] [-- <cargo test args>]
#
# Default cargo test args: --lib (the unit tests). Anything after `--` replaces them and is
# passed to `cargo test --target <triple>`, e.g.
#   targets/cross-test.sh -- --lib device::
#   targets/cross-test.sh -- --test classify -- --test-threads 1
#
# Options:
#   --install           apt/rustup-install the cross toolchains and qemu-user first
#   --setup             only install (as --install), then exit
#   --triples "T..."    triples to test (default: aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
#   --profiles "P..."   aarch64 device profiles from targets/ to emulate (default: pi3 pi4 pi5:
#                       the A53-scheduled, generic and FP16/dot-product kernel paths)
#   --release           test the release profile
#
# Each run sets QEMU_CPU and tract's detection overrides from the profile's [emulate] table
# (qemu-user 7.2 shows the guest the host's /proc/cpuinfo, so tract cannot see the emulated
# part or its FP16 flag by itself), plus RESNET_EDGE_EXPECT_PROFILE=<profile>, which makes
# the device tests assert that tract picked that profile's kernels.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/resnet-edge-target}"
triples="aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf"
profiles="pi3 pi4 pi5"
install=0
setup_only=0
release=()
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --setup) install=1; setup_only=1 ;;
    --triples) triples="$2"; shift ;;
    --profiles) profiles="$2"; shift ;;
    --release) release=(--release) ;;
    --) shift; break ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "cross-test: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
test_args=("$@")
[ ${#test_args[@]} -gt 0 ] || test_args=(--lib)

if [ "$install" = 1 ]; then
  need=()
  for cmd in aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu arm-linux-gnueabihf-gcc:gcc-arm-linux-gnueabihf \
             qemu-aarch64:qemu-user file:file; do
    command -v "${cmd%%:*}" >/dev/null || need+=("${cmd#*:}")
  done
  [ -d /usr/aarch64-linux-gnu/include ] || need+=(libc6-dev-arm64-cross)
  [ -d /usr/arm-linux-gnueabihf/include ] || need+=(libc6-dev-armhf-cross)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # shellcheck disable=SC2086
  rustup target add $triples >/dev/null
fi
[ "$setup_only" = 0 ] || exit 0

# The [emulate] table of targets/<profile>.toml as shell words: QEMU_CPU=... KEY=VALUE...
emulation() {
  python3 - "targets/$1.toml" <<'EOF'
import sys, tomllib, shlex
p = tomllib.load(open(sys.argv[1], "rb"))
e = p["emulate"]
words = [f"QEMU_CPU={e['qemu_cpu']}"] + [f"{k}={v}" for k, v in sorted(e.get("env", {}).items())]
print(" ".join(shlex.quote(w) for w in words))
EOF
}

results=()
failed=0
now() { date +%s; }
run() { # label, env words..., -- command...
  local label="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local t0; t0=$(now)
  echo "=== $label: ${envs[*]}"
  if env "${envs[@]}" "$@"; then
    results+=("PASS  $label  ($(( $(now) - t0 ))s)")
  else
    results+=("FAIL  $label  ($(( $(now) - t0 ))s)")
    failed=1
  fi
}

t_all=$(now)
for triple in $triples; do
  t0=$(now)
  echo "=== build $triple: cargo test ${release[*]} --target $triple --no-run ${test_args[*]}"
  if ! nice -n 10 cargo test "${release[@]}" --target "$triple" --no-run "${test_args[@]}"; then
    results+=("FAIL  build $triple  ($(( $(now) - t0 ))s)")
    failed=1
    continue
  fi
  results+=("PASS  build $triple  ($(( $(now) - t0 ))s)")
  case "$triple" in
    aarch64-*) emulate=$profiles ;;
    armv7-*) emulate=armv7 ;;
    *) emulate="" ;;
  esac
  for profile in $emulate; do
    eval "words=($(emulation "$profile"))"
    # shellcheck disable=SC2154
    run "$triple $profile" "${words[@]}" RESNET_EDGE_EXPECT_PROFILE="$profile" -- \
      cargo test "${release[@]}" --target "$triple" "${test_args[@]}"
  done
done

echo
echo "=== cross-test summary ($(( $(now) - t_all ))s)"
printf '%s\n' "${results[@]}"
exit $failed
