#!/usr/bin/env bash
# Build libectls, libectls_python, the example and test plugins, the C
# test harness and the C benchmark, then run the harness.
#
# Usage: ./build.sh [--no-run]
#   --no-run   build only, do not run the harness
# Environment:
#   BUILD_DIR  output directory, relative to this script's directory
#              unless absolute (default: build)
#   CC         C compiler command (default: cc)
#   PYTHON     Python interpreter for src/build.py and cdef/build_embed.py
#              (default: python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

run_harness=1
for argument in "$@"; do
  case "$argument" in
    --no-run) run_harness=0 ;;
    *) echo "build.sh: unknown option '$argument'; usage: ./build.sh [--no-run]" >&2
       exit 2 ;;
  esac
done

read -r -a cc <<< "${CC:-cc}"
python="${PYTHON:-python3}"
mkdir -p "${BUILD_DIR:-build}"
build_dir="$(cd "${BUILD_DIR:-build}" && pwd)"
lib_dir="$build_dir/libectls"
plugin_flags=(-std=c99 -Wall -Wextra -Werror -fPIC -shared -Iinclude)

echo "libectls: $("$python" src/build.py "$lib_dir")"

# libectls_python.so, the C API for Python providers, needs cffi and the
# Python headers of $python, and is used with that Python only.
if "$python" -c 'import cffi' 2>/dev/null; then
  echo "libectls_python: $("$python" cdef/build_embed.py "$lib_dir")"
else
  echo "libectls_python: skipped, because $python cannot import cffi" \
    "(set PYTHON to an interpreter that has it)"
fi

# Plugins are not linked against libectls: like Momentum modules, they
# resolve register_* and call_* from the process when they are loaded.
build_plugins() {
  local source_dir="$1" output_dir="$2" source names=()
  mkdir -p "$output_dir"
  for source in "$source_dir"/*.c; do
    [[ -e "$source" ]] || continue
    "${cc[@]}" "${plugin_flags[@]}" "$source" \
      -o "$output_dir/$(basename "$source" .c).so"
    names+=("$(basename "$source" .c)")
  done
  echo "plugins in $output_dir: ${names[*]:-none}"
}
build_plugins examples "$build_dir/examples"
build_plugins tests/plugins "$build_dir/tests/plugins"

"${cc[@]}" -std=c11 -Wall -Wextra -Werror -Iinclude tests/harness.c \
  -o "$build_dir/tests/harness" -L"$lib_dir" -lectls \
  -Wl,-rpath,"$lib_dir" -ldl -lpthread
echo "harness: $build_dir/tests/harness"

mkdir -p "$build_dir/bench"
"${cc[@]}" -std=c11 -O2 -Wall -Wextra -Werror -Iinclude bench/bench_dispatch.c \
  -o "$build_dir/bench/bench_dispatch" -L"$lib_dir" -lectls \
  -Wl,-rpath,"$lib_dir" -lpthread
echo "benchmark: $build_dir/bench/bench_dispatch"

if (( run_harness )); then
  echo "running the harness"
  "$build_dir/tests/harness" "$build_dir/tests/plugins" "$build_dir/examples"
fi
