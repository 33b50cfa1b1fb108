#!/bin/sh
# Builds and runs the tokentls provider test against a local openssl s_server.
# Keys and certificates are generated into a temporary folder and deleted on exit.
# Usage: Tests/ProviderC/run.sh   (from any directory; needs cc, pkg-config, openssl)
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tokentls-provider-test.XXXXXX")
server_pid=""

cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$work"

# Certificate authority and server certificate for localhost.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.crt -subj "/CN=tokentls-test-ca" -days 1 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
    -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 1 -extfile server.ext -out server.crt 2>/dev/null

# Client certificates: RSA-2048, P-256, P-384, P-521.
printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' > client.ext
make_client() {
    name=$1
    shift
    openssl genpkey "$@" -out "client-$name.key" 2>/dev/null
    openssl req -new -key "client-$name.key" -out "client-$name.csr" \
        -subj "/CN=tokentls-client-$name" 2>/dev/null
    openssl x509 -req -in "client-$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days 1 -extfile client.ext -out "client-$name.crt" 2>/dev/null
}
make_client rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048
make_client p256 -algorithm EC -pkeyopt ec_paramgen_curve:P-256
make_client p384 -algorithm EC -pkeyopt ec_paramgen_curve:P-384
make_client p521 -algorithm EC -pkeyopt ec_paramgen_curve:P-521

# -Verify 1 rejects clients without a certificate and -verify_return_error
# rejects certificates that do not verify against ca.crt. Port 0 lets the
# kernel pick a free port, which s_server prints as "ACCEPT 127.0.0.1:PORT".
openssl s_server -accept 127.0.0.1:0 -cert server.crt -key server.key \
    -CAfile ca.crt -Verify 1 -verify_return_error -www > server.log 2>&1 &
server_pid=$!

port=""
for _ in $(seq 1 50); do
    port=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' server.log)
    [ -n "$port" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "openssl s_server exited:" >&2
        cat server.log >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "openssl s_server did not report its port within 5 seconds:" >&2
    cat server.log >&2
    exit 1
fi

# shellcheck disable=SC2046  # pkg-config output is a list of flags
cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -O1 -g \
    -I "$repo/Sources/CTokenProvider/include" \
    -o provider_test \
    "$repo/Tests/ProviderC/provider_test.c" \
    "$repo/Sources/CTokenProvider/tokentls_provider.c" \
    $(pkg-config --cflags --libs openssl) -lpthread

status=0
./provider_test "$work" "$port" || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- openssl s_server log ---"
    cat server.log
fi
exit "$status"
