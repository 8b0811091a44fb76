#!/usr/bin/env bash
# Copies the client library (index.js and src/) into web/lib/relay/, the copy
# the web page imports (the binary embeds web/; rebuild it afterwards, and add
# a new file's route in src/http/web.rs). test/unit.test.mjs checks the copy.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/../../web/lib/relay"
rm -rf "$DEST"
mkdir -p "$DEST/src"
cp "$HERE/index.js" "$DEST/index.js"
cp "$HERE"/src/*.js "$DEST/src/"
echo "copied to web/lib/relay/"
