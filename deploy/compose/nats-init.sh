#!/bin/sh
# Makes the NATS server's TLS certificate (a CA of its own) and configuration (one nkey user per
# component: the control plane, proxy-a, proxy-b) once, into /conf, shared with the services.
set -eu
cd /conf
if [ ! -f pki/cert.pem ]; then
  mkdir -p pki
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 -subj /CN=tollgate-demo-ca \
    -keyout pki/ca.key -out pki/ca.pem
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=nats -keyout pki/key.pem -out pki/server.csr
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:nats\nextendedKeyUsage=serverAuth\n' > pki/server.ext
  openssl x509 -req -in pki/server.csr -CA pki/ca.pem -CAkey pki/ca.key -CAcreateserial -days 825 \
    -extfile pki/server.ext -out pki/cert.pem
  chmod 644 pki/key.pem
fi
tollgate-control nats-config --dir /conf --node proxy-a --node proxy-b --listen 0.0.0.0:4222 --store-dir /data \
  --tls-cert /conf/pki/cert.pem --tls-key /conf/pki/key.pem
# The control plane and the proxies run as uid 10001 (the image's tollgate user).
chown 10001 /conf/*.nk
chmod 600 /conf/*.nk
