#!/bin/sh
# Rebuilds the test objects from their C sources with fixed flags. The output depends only on
# the sources and the compiler (recorded in CLANG_VERSION): no absolute paths are embedded.
# Usage: build.sh [OUTDIR]  (default: this directory)
set -eu
cd "$(dirname "$0")"
out="${1:-.}"
for src in *.c; do
	clang -O2 -g -target bpf -fdebug-prefix-map="$PWD"=. -fdebug-compilation-dir=. \
		-c "$src" -o "$out/${src%.c}.o"
done
