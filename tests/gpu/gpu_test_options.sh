# The command line every GPU test script takes, parsed in one place (sourced, not run):
#
#   SCRIPT [--probe PATH] [--backend B|none] [--lib PATH] [--search DIR] -- COMMAND ARGS...
#
# --probe: a program that exits non-zero where there is no usable GPU (the caller then skips, exit 77).
# --backend: the gpushim backend to preload, or "none" to run the command without gpushim.
# --lib, --search: libgpushim.so itself, or a directory to look for it in when --lib names no file
# (ctest passes both: the target's path may not exist yet in a standalone build).
# shellcheck shell=bash

# parse_gpu_test_options SCRIPT_NAME ARGS...: sets probe, backend, lib, search and gpu_test_command
# (the words after --). An unknown option exits 2, naming SCRIPT_NAME; a missing command is left to the
# caller, because the scripts report it differently.
# shellcheck disable=SC2034  # the variables are read by the script that sources this file
parse_gpu_test_options() {
  local script_name="$1"
  shift
  probe="" backend="none" lib="" search=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --probe) probe="$2"; shift 2 ;;
      --backend) backend="$2"; shift 2 ;;
      --lib) lib="$2"; shift 2 ;;
      --search) search="$2"; shift 2 ;;
      --) shift; break ;;
      *) echo "$script_name: unknown option $1" >&2; exit 2 ;;
    esac
  done
  gpu_test_command=("$@")
}

# locate_libgpushim: where --lib names no file, sets lib to the first libgpushim.so under --search
# (empty if none); succeeds only if lib then names a file.
locate_libgpushim() {
  if [ -z "$lib" ] || [ ! -f "$lib" ]; then
    [ -n "$search" ] && lib=$(find "$search" -name libgpushim.so -type f 2>/dev/null | head -n 1)
  fi
  [ -n "$lib" ] && [ -f "$lib" ]
}
