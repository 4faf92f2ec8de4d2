#!/usr/bin/env bash
# spec/sanitize.sh - memory-error checks of the C module, run by ctest (see the end of
# CMakeLists.txt):
#
#   spec/sanitize.sh asan SRC_DIR ASAN_BUILD_DIR [SPEC_FILE...]
#       configures and builds ASAN_BUILD_DIR with -DNETDEVQ_SANITIZE=ON (the C module built with
#       -fsanitize=address,undefined), then runs the spec files (all of them unless some are named)
#       under busted with the ASan runtime preloaded into luajit (LuaJIT itself is not
#       instrumented); the CLI runs the specs start use the same module (NETDEVQ_BUILD). Any
#       AddressSanitizer or UndefinedBehaviorSanitizer report, in the spec process or in any child,
#       fails the run (reports go to files, then here).
#   spec/sanitize.sh asan-build SRC_DIR ASAN_BUILD_DIR
#   spec/sanitize.sh asan-run SRC_DIR ASAN_BUILD_DIR SPEC_FILE...
#       the two halves of the above: ctest builds once (a fixture), then runs one test per spec
#       file, each with its own timeout and its own verdict.
#
#   spec/sanitize.sh valgrind SRC_DIR BUILD_DIR
#       two CLI runs under valgrind memcheck (events with JSON and pcapng output and a Lua
#       aggregation; an in-kernel histogram): exit status 0 and zero errors, or the run fails.
#       spec/sanitize.valgrind.supp holds the only suppressions: valgrind's model of bpf(2).
#
# ASAN_OPTIONS: detect_leaks=0, the one thing LuaJIT needs: its heap is mmap'd memory that
# LeakSanitizer does not scan, so everything the C module hands to Lua (a tracer's userdata holds
# the pointer) would look leaked. netdevq's leaks are checked where they matter instead: fds and
# BPF objects, by spec/leak_spec.lua and spec/failure_spec.lua.
set -euo pipefail

mode=${1:?usage: spec/sanitize.sh asan|asan-build|asan-run|valgrind SRC_DIR BUILD_DIR [SPEC...]}
src=$(cd "${2:?source directory}" && pwd)
build=${3:?build directory}
cd "$src"

if [ "$(id -u)" -ne 0 ] && [ "${CI:-}" = true ]; then
  echo "sanitize.sh: needs root in CI (the specs load BPF programs)" >&2
  exit 1
fi

asan_build() {
  cmake -S "$src" -B "$build" -DNETDEVQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j "$(nproc)" >/dev/null  # every target: the specs use the test helpers too
}

asan_run() {
  [ -f "$build/netdevq/core.so" ] || { echo "sanitize.sh: no sanitized build in $build" >&2; exit 1; }
  cc=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
  runtime=$("${cc:-cc}" -print-file-name=libasan.so)
  [ -f "$runtime" ] || { echo "sanitize.sh: no ASan runtime ($runtime)" >&2; exit 1; }
  reports=$(mktemp -d /tmp/ndq-sanitize.XXXXXX)
  trap 'rm -rf "$reports"' EXIT
  # The ASan runtime goes into every luajit (the spec processes, the CLI children and the fuzz
  # harnesses, which load the sanitized module) and into nothing else: a `luajit` first on PATH
  # starts the real one through the dynamic loader with --preload, which, unlike LD_PRELOAD, is
  # not inherited by the processes luajit starts (tshark, capinfos and other glib programs
  # deadlock under a preloaded ASan runtime; sh, ip, bpftool need none).
  loader=$(readelf -l "$(command -v luajit)" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
  [ -x "$loader" ] || { echo "sanitize.sh: no dynamic loader found for luajit" >&2; exit 1; }
  # (the loader runs through a symlink named luajit, so that the process is still called luajit:
  # specs find the tracer by its comm)
  chmod 755 "$reports" # specs run the CLI as another user too (setpriv)
  mkdir -p "$reports/bin" "$reports/loader"
  ln -s "$loader" "$reports/loader/luajit"
  printf '#!/bin/sh\nexec %s --preload %s %s "$@"\n' "$reports/loader/luajit" "$runtime" \
    "$(command -v luajit)" >"$reports/bin/luajit"
  chmod 755 "$reports/bin" "$reports/loader" "$reports/bin/luajit"
  export PATH="$reports/bin:$PATH"
  mkdir -m 1777 "$reports/log"
  export ASAN_OPTIONS="detect_leaks=0:log_path=$reports/log/asan:log_exe_name=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/log/ubsan:log_exe_name=1"
  export NETDEVQ_BUILD="$build" NDQ_SEND="$build/ndq_send"
  failed=()
  start=$(date +%s)
  specs=("$@")
  [ ${#specs[@]} -gt 0 ] || specs=(spec/*_spec.lua)
  for spec in "${specs[@]}"; do
    t0=$(date +%s)
    if busted --lua=luajit --cpath="$build/?.so" -o utfTerminal "$spec" >"$reports/out" 2>&1; then
      echo "sanitize.sh: ok     $spec ($(( $(date +%s) - t0 )) s)"
    else
      echo "sanitize.sh: FAILED $spec ($(( $(date +%s) - t0 )) s)"
      tail -n 60 "$reports/out"
      failed+=("$spec")
    fi
  done
  # reports of any process, the CLI children included (a spec may not notice its child's report)
  found=0
  for r in "$reports"/log/*; do
    [ -e "$r" ] || continue
    found=1
    echo "sanitize.sh: sanitizer report $r:"
    cat "$r"
  done
  echo "sanitize.sh: ${#specs[@]} spec files with the sanitized module in" \
       "$(( $(date +%s) - start )) s; ${#failed[@]} failed; sanitizer reports: $found"
  [ ${#failed[@]} -eq 0 ] && [ $found -eq 0 ]
}

case "$mode" in
asan)
  asan_build
  asan_run "${@:4}"
  ;;

asan-build)
  asan_build
  ;;

asan-run)
  [ $# -ge 4 ] || { echo "usage: spec/sanitize.sh asan-run SRC_DIR BUILD_DIR SPEC_FILE..." >&2; exit 2; }
  asan_run "${@:4}"
  ;;

valgrind)
  work=$(mktemp -d /tmp/ndq-valgrind.XXXXXX)
  cleanup() {
    [ -n "${vg_pid:-}" ] && kill "$vg_pid" 2>/dev/null || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  export NETDEVQ_BUILD="$build"
  vg=(valgrind -q --error-exitcode=99 --suppressions="$src/spec/sanitize.valgrind.supp")
  port=$(( 30000 + $$ % 20000 ))
  status=0

  # 1: events: JSON lines, pcapng, a Lua count; loopback traffic made once it is attached
  "${vg[@]}" luajit scripts/netdevq.lua -F json -o len,proto,dport --count proto \
      -w "$work/out.pcapng" -n 30 -d 120 -f "dev == \"lo\" and dport == $port" \
      >"$work/out1" 2>"$work/err1" &
  vg_pid=$!
  for _ in $(seq 1 600); do
    grep -q "Ctrl-C to stop" "$work/err1" && break
    kill -0 "$vg_pid" 2>/dev/null || break
    sleep 0.1
  done
  "$build/ndq_send" udp4 127.0.0.1 127.0.0.1 "$port" 40000 10,20,30 10 >/dev/null
  rc=0; wait "$vg_pid" || rc=$?
  vg_pid=
  events=$(grep -c '"type":"event"' "$work/out1" || true)
  if [ "$rc" -ne 0 ] || [ "$events" -ne 30 ]; then
    echo "sanitize.sh: valgrind run 1 (events) failed: status $rc, $events of 30 events"
    cat "$work/err1"
    status=1
  else
    echo "sanitize.sh: valgrind run 1 (events, JSON, pcapng, Lua count): 0 errors"
  fi

  # 2: an in-kernel histogram read back at the end
  rc=0
  "${vg[@]}" luajit scripts/netdevq.lua -q --hist len --by dev -d 2 >"$work/out2" 2>"$work/err2" || rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q "events, .* matched, .* lost" "$work/err2"; then
    echo "sanitize.sh: valgrind run 2 (kernel histogram) failed: status $rc"
    cat "$work/err2"
    status=1
  else
    echo "sanitize.sh: valgrind run 2 (in-kernel histogram): 0 errors"
  fi
  exit $status
  ;;

*)
  echo "usage: spec/sanitize.sh asan|asan-build|asan-run|valgrind SRC_DIR BUILD_DIR [SPEC...]" >&2
  exit 2
  ;;
esac
