#!/usr/bin/env bash
# Fails (exit 1, naming the files) when tracked files include key material: `*.key` files, or files
# with a PEM private key header (`-----BEGIN … PRIVATE KEY-----` at the start of a line, indented
# or not). Test fixtures are exempt: paths with a `tests/` or `fixtures/` directory, or `testdata`.
# Usage: bash .ci/check-keys.sh   (from anywhere inside the checkout)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

exempt() { [[ "$1" =~ (^|/)(tests|fixtures)/ || "$1" == *testdata* ]]; }

found=()
while IFS= read -r -d '' path; do
  exempt "$path" || found+=("$path")
done < <(
  {
    git ls-files -z -- '*.key'
    # A header inside a string literal (a parser looking for one) starts after a quote: not matched.
    git grep -lzIE '^[[:space:]]*-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----' -- . || true
  } | sort -zu
)

if ((${#found[@]})); then
  echo "key material is tracked (remove it with git rm; keep test keys under tests/ or fixtures/):" >&2
  printf '  %s\n' "${found[@]}" >&2
  exit 1
fi
echo "no key material tracked"
