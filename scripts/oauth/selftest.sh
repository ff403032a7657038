#!/usr/bin/env bash
# Self-test of the test authorization server (as.mjs): starts it on a free port and drives
# every documented flow with curl, asserting the results. Exit status 0 only if all pass.
# Needs: node, npm, curl. Usage: scripts/oauth/selftest.sh
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

if [ ! -d node_modules/oidc-provider ] || [ ! -d node_modules/jose ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2 || { echo "npm ci failed" >&2; exit 1; }
fi

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $1" >&2; }
# eq ACTUAL EXPECTED DESCRIPTION
eq() { if [ "$1" == "$2" ]; then ok "$3"; else bad "$3: expected [$2], got [$1]"; fi; }
# ne ACTUAL UNEXPECTED DESCRIPTION
ne() { if [ "$1" != "$2" ]; then ok "$3"; else bad "$3: unexpectedly [$1]"; fi; }
# has HAYSTACK NEEDLE DESCRIPTION
has() { case "$1" in *"$2"*) ok "$3" ;; *) bad "$3: [$2] not in [$1]" ;; esac; }

# jget PATH: read JSON from stdin, print the value at dotted PATH (strings raw, rest as JSON).
jget() {
  node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      let v; try { v = JSON.parse(s); } catch { v = undefined; }
      for (const k of process.argv[1].split(".")) v = v == null ? undefined : v[k];
      process.stdout.write(v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));
    });' -- "$1"
}
# jwt_part header|payload TOKEN: decoded JSON of a JWT part.
jwt_part() {
  node -e '
    const [part, t] = process.argv.slice(1); const i = part === "header" ? 0 : 1;
    try { process.stdout.write(Buffer.from(t.split(".")[i], "base64url").toString()); } catch {}' -- "$1" "$2"
}
# jwt_verify TOKEN JWKS_URL ISSUER AUDIENCE: prints "valid" if signature and claims verify.
jwt_verify() {
  node --input-type=module -e '
    import * as jose from "jose";
    const [t, jwks, iss, aud] = process.argv.slice(1);
    try {
      await jose.jwtVerify(t, jose.createRemoteJWKSet(new URL(jwks)), { issuer: iss, audience: aud, typ: "at+jwt" });
      console.log("valid");
    } catch (e) { console.log("invalid: " + (e.code || e.message)); }' -- "$1" "$2" "$3" "$4"
}
b64url_sha256() { node -e 'process.stdout.write(require("crypto").createHash("sha256").update(process.argv[1]).digest("base64url"))' -- "$1"; }
rand() { node -e 'process.stdout.write(require("crypto").randomBytes(32).toString("base64url"))'; }
urlenc() { node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' -- "$1"; }

# start_as NAME [ENV=VAL...]: starts as.mjs on a free port, sets AS to its issuer URL.
start_as() {
  local name="$1"; shift
  env AS_PORT=0 "$@" node as.mjs >"$TMP/$name.out" 2>"$TMP/$name.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if grep -q '^READY ' "$TMP/$name.out" 2>/dev/null; then
      AS="$(sed -n 's/^READY //p' "$TMP/$name.out")"
      return 0
    fi
    sleep 0.1
  done
  echo "AS $name did not become ready" >&2; cat "$TMP/$name.err" >&2; exit 1
}

TE='urn:ietf:params:oauth:grant-type:token-exchange'
TT_AT='urn:ietf:params:oauth:token-type:access_token'
GW='gateway:gateway-secret'
RES='http://127.0.0.1:18080/mcp'
REDIRECT='http://127.0.0.1:18999/callback'

start_as main
echo "# AS at $AS"
eq "$(wc -l <"$TMP/main.out" | tr -d ' ')" "1" "stdout has exactly one line"
eq "$(sed -n 1p "$TMP/main.out")" "READY $AS" "READY line format"

# ---------------------------------------------------------------- discovery
D="$(curl -s "$AS/.well-known/openid-configuration")"
eq "$(jget issuer <<<"$D")" "$AS" "discovery issuer equals base URL"
eq "$(jget code_challenge_methods_supported <<<"$D")" '["S256"]' "only S256 PKCE"
has "$(jget grant_types_supported <<<"$D")" "$TE" "token exchange grant advertised"
eq "$(jget introspection_endpoint <<<"$D")" "$AS/token/introspection" "introspection endpoint"
eq "$(jget revocation_endpoint <<<"$D")" "$AS/token/revocation" "revocation endpoint"
eq "$(jget registration_endpoint <<<"$D")" "$AS/reg" "registration endpoint"
D8414="$(curl -s "$AS/.well-known/oauth-authorization-server")"
eq "$D8414" "$D" "RFC 8414 metadata equals OIDC discovery"

# ---------------------------------------------------------------- DCR
PUB="$(curl -s "$AS/reg" -H 'content-type: application/json' -d "{\"client_name\":\"mcp-client\",\"redirect_uris\":[\"$REDIRECT\"],\"grant_types\":[\"authorization_code\",\"refresh_token\"],\"response_types\":[\"code\"],\"token_endpoint_auth_method\":\"none\"}")"
PUB_ID="$(jget client_id <<<"$PUB")"
ne "$PUB_ID" "" "DCR public client gets client_id"
eq "$(jget client_secret <<<"$PUB")" "" "public client has no secret"
M2M="$(curl -s "$AS/reg" -H 'content-type: application/json' -d '{"client_name":"m2m","redirect_uris":[],"response_types":[],"grant_types":["client_credentials"],"token_endpoint_auth_method":"client_secret_basic"}')"
M2M_ID="$(jget client_id <<<"$M2M")"
M2M_SECRET="$(jget client_secret <<<"$M2M")"
ne "$M2M_SECRET" "" "DCR confidential client gets client_secret"
R="$(curl -s "$AS/reg" -H 'content-type: application/json' -d "{\"redirect_uris\":[\"$REDIRECT\"],\"token_endpoint_auth_method\":\"none\",\"scope\":\"mcp:tools github:read\"}")"
eq "$(jget scope <<<"$R")" "mcp:tools github:read" "DCR accepts a scope in client metadata"
R="$(curl -s "$AS/reg" -H 'content-type: application/json' -d '{"redirect_uris":["ftp://x/cb"]}')"
eq "$(jget error <<<"$R")" "invalid_redirect_uri" "DCR rejects a bad redirect_uri"

# ---------------------------------------------------------------- client_credentials -> JWT
R="$(curl -s -u "$M2M_ID:$M2M_SECRET" "$AS/token" -d grant_type=client_credentials \
  --data-urlencode "resource=$RES" --data-urlencode 'scope=mcp:tools github:read unknown:scope')"
CC_JWT="$(jget access_token <<<"$R")"
eq "$(jget token_type <<<"$R")" "Bearer" "cc token_type"
eq "$(jget scope <<<"$R")" "mcp:tools github:read" "cc scope filtered to allowed scopes"
H="$(jwt_part header "$CC_JWT")"; P="$(jwt_part payload "$CC_JWT")"
eq "$(jget alg <<<"$H")" "RS256" "cc JWT alg RS256"
eq "$(jget typ <<<"$H")" "at+jwt" "cc JWT typ at+jwt"
eq "$(jget aud <<<"$P")" "$RES" "cc JWT aud = resource"
eq "$(jget iss <<<"$P")" "$AS" "cc JWT iss"
eq "$(jget sub <<<"$P")" "$M2M_ID" "cc JWT sub = client_id"
eq "$(jget client_id <<<"$P")" "$M2M_ID" "cc JWT client_id"
eq "$(jwt_verify "$CC_JWT" "$AS/jwks" "$AS" "$RES")" "valid" "cc JWT verifies against JWKS"
OLD_KID="$(jget kid <<<"$H")"
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode 'resource=urn:not-http' -d scope=mcp:tools)"
eq "$(jget error <<<"$R")" "invalid_target" "non-http resource rejected"
R="$(curl -s -u "gateway:wrong" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES")"
eq "$(jget error <<<"$R")" "invalid_client" "wrong gateway secret rejected"

# ---------------------------------------------------------------- ES256 (path segment)
RES_ES="http://127.0.0.1:18080/es256/mcp"
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES_ES" -d scope=mcp:tools)"
ES_JWT="$(jget access_token <<<"$R")"
eq "$(jget alg <<<"$(jwt_part header "$ES_JWT")")" "ES256" "es256 resource gets ES256 JWT"
eq "$(jwt_verify "$ES_JWT" "$AS/jwks" "$AS" "$RES_ES")" "valid" "ES256 JWT verifies against JWKS"

# ---------------------------------------------------------------- authorization code + PKCE
JAR="$TMP/jar"
# authorize QUERY: follows redirects with the cookie jar until the client's redirect_uri;
# sets HOPS (paths visited) and CALLBACK (final Location).
authorize() {
  local url="$AS/auth?$1" loc
  HOPS=""; CALLBACK=""
  for _ in 1 2 3 4 5 6; do
    loc="$(curl -s -o /dev/null -b "$JAR" -c "$JAR" -w '%{redirect_url}' "$url")"
    [ -z "$loc" ] && { CALLBACK=""; return 1; }
    if [[ "$loc" == "$REDIRECT"* ]]; then CALLBACK="$loc"; return 0; fi
    HOPS="$HOPS ${loc#"$AS"}"
    url="$loc"
  done
  return 1
}
qparam() { node -e 'process.stdout.write(new URL(process.argv[1]).searchParams.get(process.argv[2]) ?? "")' -- "$1" "$2"; }

VERIFIER="$(rand)"; CHALLENGE="$(b64url_sha256 "$VERIFIER")"
Q="response_type=code&client_id=$PUB_ID&redirect_uri=$(urlenc "$REDIRECT")&scope=$(urlenc 'mcp:tools github:read')&resource=$(urlenc "$RES")&code_challenge=$CHALLENGE&code_challenge_method=S256&state=st123"
authorize "$Q"
ne "$CALLBACK" "" "auth code flow reaches redirect_uri"
case "$HOPS" in " /interaction/"*" /auth/"*) ok "hops: /interaction/<uid> then /auth/<uid>" ;; *) bad "unexpected hops [$HOPS]" ;; esac
eq "$(wc -w <<<"$HOPS" | tr -d ' ')" "2" "exactly two hops before the redirect_uri"
eq "$(qparam "$CALLBACK" state)" "st123" "state echoed"
eq "$(qparam "$CALLBACK" iss)" "$AS" "iss in authorization response"
CODE="$(qparam "$CALLBACK" code)"
ne "$CODE" "" "got authorization code"
R="$(curl -s "$AS/token" -d grant_type=authorization_code -d "client_id=$PUB_ID" -d "code=$CODE" \
  -d "code_verifier=wrong$VERIFIER" --data-urlencode "redirect_uri=$REDIRECT")"
eq "$(jget error <<<"$R")" "invalid_grant" "wrong code_verifier rejected"
# the failed attempt consumed nothing we rely on: get a fresh code (session cookie => no interaction)
authorize "$Q"
eq "$HOPS" "" "second authorization with session cookie skips interaction"
CODE="$(qparam "$CALLBACK" code)"
R="$(curl -s "$AS/token" -d grant_type=authorization_code -d "client_id=$PUB_ID" -d "code=$CODE" \
  -d "code_verifier=$VERIFIER" --data-urlencode "redirect_uri=$REDIRECT")"
USER_JWT="$(jget access_token <<<"$R")"
RT="$(jget refresh_token <<<"$R")"
eq "$(jget scope <<<"$R")" "mcp:tools github:read" "auth code token scope"
ne "$RT" "" "refresh token issued"
P="$(jwt_part payload "$USER_JWT")"
eq "$(jget sub <<<"$P")" "alice" "auth code JWT sub = alice"
eq "$(jget aud <<<"$P")" "$RES" "auth code JWT aud = resource"
eq "$(jget client_id <<<"$P")" "$PUB_ID" "auth code JWT client_id"
eq "$(jwt_verify "$USER_JWT" "$AS/jwks" "$AS" "$RES")" "valid" "auth code JWT verifies"
R="$(curl -s "$AS/token" -d grant_type=refresh_token -d "client_id=$PUB_ID" -d "refresh_token=$RT")"
eq "$(jget aud <<<"$(jwt_part payload "$(jget access_token <<<"$R")")")" "$RES" "refresh grant yields JWT for the resource"
# openid + resource: ID token too, but the resource JWT carries only resource scopes
V4="$(rand)"
authorize "response_type=code&client_id=$PUB_ID&redirect_uri=$(urlenc "$REDIRECT")&scope=$(urlenc 'openid mcp:tools')&resource=$(urlenc "$RES")&code_challenge=$(b64url_sha256 "$V4")&code_challenge_method=S256"
R="$(curl -s "$AS/token" -d grant_type=authorization_code -d "client_id=$PUB_ID" -d "code=$(qparam "$CALLBACK" code)" \
  -d "code_verifier=$V4" --data-urlencode "redirect_uri=$REDIRECT")"
ne "$(jget id_token <<<"$R")" "" "openid scope yields an id_token"
eq "$(jget scope <<<"$(jwt_part payload "$(jget access_token <<<"$R")")")" "mcp:tools" "resource JWT scope excludes openid"
# PKCE is mandatory
R="$(curl -s -o /dev/null -w '%{redirect_url}' "$AS/auth?response_type=code&client_id=$PUB_ID&redirect_uri=$(urlenc "$REDIRECT")&scope=mcp:tools&resource=$(urlenc "$RES")")"
eq "$(qparam "$R" error)" "invalid_request" "authorization without PKCE rejected"
# login_hint selects the user of a new session (fresh cookie jar)
V2="$(rand)"
JAR="$TMP/jar-bob"
authorize "response_type=code&client_id=$PUB_ID&redirect_uri=$(urlenc "$REDIRECT")&scope=mcp:tools&resource=$(urlenc "$RES")&code_challenge=$(b64url_sha256 "$V2")&code_challenge_method=S256&login_hint=bob"
R="$(curl -s "$AS/token" -d grant_type=authorization_code -d "client_id=$PUB_ID" -d "code=$(qparam "$CALLBACK" code)" \
  -d "code_verifier=$V2" --data-urlencode "redirect_uri=$REDIRECT")"
eq "$(jget sub <<<"$(jwt_part payload "$(jget access_token <<<"$R")")")" "bob" "login_hint=bob gives sub bob"
JAR="$TMP/jar"

# ---------------------------------------------------------------- opaque tokens + introspection
RES_OP="http://127.0.0.1:18080/opaque/mcp"
R="$(curl -s -u "$M2M_ID:$M2M_SECRET" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES_OP" -d 'scope=mcp:tools admin')"
OPQ="$(jget access_token <<<"$R")"
eq "$(tr -cd . <<<"$OPQ")" "" "opaque resource gets a non-JWT token"
I="$(curl -s -u "$GW" "$AS/token/introspection" -d "token=$OPQ")"
eq "$(jget active <<<"$I")" "true" "introspection active"
eq "$(jget aud <<<"$I")" "$RES_OP" "introspection aud"
eq "$(jget scope <<<"$I")" "mcp:tools admin" "introspection scope"
eq "$(jget client_id <<<"$I")" "$M2M_ID" "introspection client_id"
eq "$(jget sub <<<"$I")" "$M2M_ID" "introspection sub (cc token) = client_id"
eq "$(jget iss <<<"$I")" "$AS" "introspection iss"
ne "$(jget exp <<<"$I")" "" "introspection exp"
eq "$(curl -s -u "$GW" "$AS/token/introspection" -d "token=nope" | jget active)" "false" "unknown token inactive"
eq "$(curl -s -o /dev/null -w '%{http_code}' -u gateway:wrong "$AS/token/introspection" -d "token=$OPQ")" "401" "introspection needs gateway credentials"
# opaque user token via auth code
V3="$(rand)"
authorize "response_type=code&client_id=$PUB_ID&redirect_uri=$(urlenc "$REDIRECT")&scope=mcp:tools&resource=$(urlenc "$RES_OP")&code_challenge=$(b64url_sha256 "$V3")&code_challenge_method=S256"
R="$(curl -s "$AS/token" -d grant_type=authorization_code -d "client_id=$PUB_ID" -d "code=$(qparam "$CALLBACK" code)" \
  -d "code_verifier=$V3" --data-urlencode "redirect_uri=$REDIRECT")"
USER_OPQ="$(jget access_token <<<"$R")"
I="$(curl -s -u "$GW" "$AS/token/introspection" -d "token=$USER_OPQ")"
eq "$(jget sub <<<"$I")" "alice" "introspection of opaque user token: sub alice"
eq "$(jget active <<<"$I")" "true" "opaque user token active"

# ---------------------------------------------------------------- token exchange
R="$(curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=$USER_JWT" -d "subject_token_type=$TT_AT" \
  --data-urlencode 'resource=https://api.example.test/' -d scope=github:write)"
eq "$(jget issued_token_type <<<"$R")" "$TT_AT" "exchange issued_token_type"
eq "$(jget token_type <<<"$R")" "Bearer" "exchange token_type"
eq "$(jget scope <<<"$R")" "github:write" "exchange scope as requested"
XP="$(jwt_part payload "$(jget access_token <<<"$R")")"
eq "$(jget sub <<<"$XP")" "alice" "exchanged sub = subject's sub"
eq "$(jget aud <<<"$XP")" "https://api.example.test/" "exchanged aud = resource"
eq "$(jget act.sub <<<"$XP")" "gateway" "exchanged act.sub = gateway"
eq "$(jget client_id <<<"$XP")" "gateway" "exchanged client_id = gateway"
eq "$(jwt_verify "$(jget access_token <<<"$R")" "$AS/jwks" "$AS" "https://api.example.test/")" "valid" "exchanged JWT verifies"
R="$(curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=$USER_OPQ" -d "subject_token_type=$TT_AT" -d audience=upstream-api)"
XP="$(jwt_part payload "$(jget access_token <<<"$R")")"
eq "$(jget aud <<<"$XP")" "upstream-api" "exchange with audience and opaque subject"
eq "$(jget scope <<<"$XP")" "mcp:tools" "no scope param: subject's scopes inherited"
R="$(curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=${USER_JWT}x" -d "subject_token_type=$TT_AT" -d audience=a)"
eq "$(jget error <<<"$R")" "invalid_grant" "tampered subject token rejected"
R="$(curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=$USER_JWT" -d "subject_token_type=urn:ietf:params:oauth:token-type:id_token" -d audience=a)"
eq "$(jget error <<<"$R")" "invalid_request" "wrong subject_token_type rejected"
R="$(curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=$USER_JWT" -d "subject_token_type=$TT_AT")"
eq "$(jget error <<<"$R")" "invalid_target" "exchange without resource/audience rejected"
R="$(curl -s -u "$M2M_ID:$M2M_SECRET" "$AS/token" -d "grant_type=$TE" -d "subject_token=$USER_JWT" -d "subject_token_type=$TT_AT" -d audience=a)"
ne "$(jget error <<<"$R")" "" "client without the grant type cannot exchange"

# ---------------------------------------------------------------- revocation
eq "$(curl -s -o /dev/null -w '%{http_code}' -u "$M2M_ID:$M2M_SECRET" "$AS/token/revocation" -d "token=$OPQ")" "200" "RFC 7009 revocation by owning client"
eq "$(curl -s -u "$GW" "$AS/token/introspection" -d "token=$OPQ" | jget active)" "false" "revoked token inactive"
R="$(curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=$OPQ" -d "subject_token_type=$TT_AT" -d audience=a)"
eq "$(jget error <<<"$R")" "invalid_grant" "revoked subject token cannot be exchanged"
eq "$(curl -s -X POST "$AS/_test/revoke?token=$USER_OPQ" | jget revoked)" "true" "/_test/revoke revokes any opaque token"
eq "$(curl -s -u "$GW" "$AS/token/introspection" -d "token=$USER_OPQ" | jget active)" "false" "test-revoked token inactive"

# ---------------------------------------------------------------- per-resource settings
RES_SHORT="http://127.0.0.1:18080/short"
R="$(curl -s -X POST "$AS/_test/resources" -H 'content-type: application/json' -d "{\"resource\":\"$RES_SHORT\",\"format\":\"opaque\",\"ttl\":1,\"scopes\":\"mcp:tools\"}")"
eq "$(jget accessTokenFormat <<<"$R")" "opaque" "resource settings stored"
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES_SHORT" -d 'scope=mcp:tools admin')"
eq "$(jget expires_in <<<"$R")" "1" "resource ttl applied"
eq "$(jget scope <<<"$R")" "mcp:tools" "resource scope list applied"
SHORT="$(jget access_token <<<"$R")"
sleep 2.1
eq "$(curl -s -u "$GW" "$AS/token/introspection" -d "token=$SHORT" | jget active)" "false" "expired token inactive"
curl -s -X POST "$AS/_test/resources" -H 'content-type: application/json' -d "{\"resource\":\"$RES\",\"alg\":\"ES256\"}" >/dev/null
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES")"
eq "$(jget alg <<<"$(jwt_part header "$(jget access_token <<<"$R")")")" "ES256" "resource alg setting applied"
curl -s -X POST "$AS/_test/resources" -H 'content-type: application/json' -d "{\"resource\":\"$RES\"}" >/dev/null
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES")"
eq "$(jget alg <<<"$(jwt_part header "$(jget access_token <<<"$R")")")" "RS256" "resource settings reset"

# ---------------------------------------------------------------- key rotation
K="$(curl -s "$AS/_test/keys")"
eq "$(jget active.RS256 <<<"$K")" "$OLD_KID" "active RS256 kid before rotation"
K="$(curl -s -X POST "$AS/_test/rotate")"
NEW_KID="$(jget active.RS256 <<<"$K")"
ne "$NEW_KID" "$OLD_KID" "rotation makes a new active kid"
KIDS="$(curl -s "$AS/jwks" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).keys.map(k=>k.kid).join(" ")))')"
eq "${KIDS%% *}" "$NEW_KID" "new key is first in JWKS"
has "$KIDS" "$OLD_KID" "old key still published"
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES")"
eq "$(jget kid <<<"$(jwt_part header "$(jget access_token <<<"$R")")")" "$NEW_KID" "new tokens carry the new kid"
eq "$(jwt_verify "$CC_JWT" "$AS/jwks" "$AS" "$RES")" "valid" "old token still verifies after rotation"
eq "$(curl -s -u "$GW" "$AS/token/introspection" -d "token=$(jget access_token <<<"$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES_OP")")" | jget active)" "true" "state survives rotation (opaque token)"
authorize "$Q"
eq "$HOPS" "" "session survives rotation"
K="$(curl -s -X POST "$AS/_test/rotate?drop_old=1")"
KIDS="$(jget kids <<<"$K")"
case "$KIDS" in *"$OLD_KID"*|*"$NEW_KID"*) bad "drop_old removes previous keys: $KIDS" ;; *) ok "drop_old removes previous keys" ;; esac
has "$(jwt_verify "$CC_JWT" "$AS/jwks" "$AS" "$RES")" "invalid" "token of dropped key no longer verifies"

# ---------------------------------------------------------------- stats
curl -s -X POST "$AS/_test/stats/reset" >/dev/null
curl -s "$AS/jwks" >/dev/null
curl -s "$AS/.well-known/oauth-authorization-server" >/dev/null
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES_OP")"
T="$(jget access_token <<<"$R")"
curl -s -u "$GW" "$AS/token/introspection" -d "token=$T" >/dev/null
curl -s -u "$GW" "$AS/token/introspection" -d "token=$T" >/dev/null
curl -s -u "$GW" "$AS/token" -d "grant_type=$TE" -d "subject_token=$T" -d "subject_token_type=$TT_AT" -d audience=a >/dev/null
S="$(curl -s "$AS/_test/stats")"
eq "$(jget requests.jwks <<<"$S")" "1" "stats: jwks count"
eq "$(jget requests.introspection <<<"$S")" "2" "stats: introspection count"
eq "$(jget requests.token <<<"$S")" "2" "stats: token count"
eq "$(jget requests.oauth_authorization_server <<<"$S")" "1" "stats: RFC 8414 metadata count"
eq "$(jget requests.discovery <<<"$S")" "1" "stats: discovery count (8414 is served by it)"
eq "$(jget token_by_grant_type.client_credentials <<<"$S")" "1" "stats: client_credentials count"
eq "$(jget "token_by_grant_type.$TE" <<<"$S")" "1" "stats: token exchange grant count"
eq "$(jget token_exchange.issued <<<"$S")" "1" "stats: token exchange issued count"

# ---------------------------------------------------------------- env switches
start_as es AS_ALG=ES256 AS_SCOPES='a:read a:write' GATEWAY_AS_SECRET=s3cret
R="$(curl -s -u gateway:s3cret "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES" -d 'scope=a:read mcp:tools')"
eq "$(jget alg <<<"$(jwt_part header "$(jget access_token <<<"$R")")")" "ES256" "AS_ALG=ES256 default"
eq "$(jget scope <<<"$R")" "a:read" "AS_SCOPES applied"
start_as opaque AS_TOKEN_FORMAT=opaque AS_TOKEN_TTL=42
R="$(curl -s -u "$GW" "$AS/token" -d grant_type=client_credentials --data-urlencode "resource=$RES")"
eq "$(tr -cd . <<<"$(jget access_token <<<"$R")")" "" "AS_TOKEN_FORMAT=opaque default"
eq "$(jget expires_in <<<"$R")" "42" "AS_TOKEN_TTL applied"
OUT="$( (sleep 1) | AS_PORT=0 AS_EXIT_ON_STDIN_EOF=1 timeout 10 node as.mjs 2>/dev/null)"
eq "$?:${OUT%% *}" "0:READY" "AS_EXIT_ON_STDIN_EOF=1 exits when stdin closes"

if [ -s "$TMP/main.err" ]; then echo "# AS stderr:"; sed 's/^/#   /' "$TMP/main.err"; fi
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
