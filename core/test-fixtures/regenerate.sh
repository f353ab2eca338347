#!/usr/bin/env bash
# Regenerates the client-certificate fixtures used by core/src/identity/client_certificate.rs tests.
# Test-only keys: never trust them for anything. Requires the openssl command line tool.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -subj "/CN=redis-entraid test CA" -days 36500 -out ca.crt
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out leaf.key
openssl req -new -key leaf.key -subj "/CN=redis-entraid test client" -out "$tmp/leaf.csr"
openssl x509 -req -in "$tmp/leaf.csr" -CA ca.crt -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 36500 -out leaf.crt
# PKCS#8 key, leaf, then CA (the layout AZURE_CLIENT_CERTIFICATE_PATH points at)
cat leaf.key leaf.crt ca.crt > client-pkcs8.pem
# PKCS#1 ("RSA PRIVATE KEY") key after the certificates: order must not matter
openssl pkey -in leaf.key -traditional -out "$tmp/leaf-pkcs1.key"
cat leaf.crt ca.crt "$tmp/leaf-pkcs1.key" > client-pkcs1.pem
# PKCS#12 with a password (OpenSSL 3 defaults: PBES2/AES-256-CBC, HMAC-SHA256 MAC)
openssl pkcs12 -export -inkey leaf.key -in leaf.crt -certfile ca.crt \
  -passout pass:fixture-p12-password -out client.p12
# PKCS#12 with an empty password
openssl pkcs12 -export -inkey leaf.key -in leaf.crt -passout pass: -out client-nopass.p12
# Keys the loader must refuse with a clear error: RSA below 2048 bits, and not RSA at all
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$tmp/small.key"
openssl req -x509 -new -key "$tmp/small.key" -subj "/CN=redis-entraid test 1024" -days 36500 -out "$tmp/small.crt"
cat "$tmp/small.key" "$tmp/small.crt" > rsa1024.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ec.key"
openssl req -x509 -new -key "$tmp/ec.key" -subj "/CN=redis-entraid test ec" -days 36500 -out "$tmp/ec.crt"
cat "$tmp/ec.key" "$tmp/ec.crt" > ec.pem
rm -f ca.srl leaf.key
